"""Command line: `python -m voicekit say|chat|transcribe|voices|upgrade|serve|doctor|config|bench`.

User mistakes (empty or long text, unknown voice, a missing model) print one `error:` line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from voicekit.errors import VoicekitError
from voicekit.pipeline import MODES


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except VoicekitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="voicekit", description="Talk with a language model out loud.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and timings")
    commands = parser.add_subparsers(dest="command", required=True)

    say = commands.add_parser("say", help="speak a text and save it as WAV")
    say.add_argument("text", help="text to speak ('-' reads standard input)")
    _add_common(say)
    say.add_argument("-o", "--output", default="say.wav", help="WAV file to write (default: say.wav)")
    say.set_defaults(run=run_say)

    chat = commands.add_parser("chat", help="let the chat model reply, print it and save the spoken reply")
    chat.add_argument("message", help="your message ('-' reads standard input)")
    _add_common(chat)
    chat.add_argument("-o", "--output", default="reply.wav", help="WAV file to write (default: reply.wav)")
    chat.add_argument("--mode", choices=MODES, help="speak after the reply (default) or while")
    chat.add_argument("--json", action="store_true", help="print the reply and timings as JSON")
    chat.set_defaults(run=run_chat)

    transcribe = commands.add_parser("transcribe", help="print the words spoken in an audio file (speech "
                                     "recognition; loads neither the chat model nor the voices)")
    transcribe.add_argument("file", help="WAV, MP3, Ogg/Opus, WebM, FLAC, M4A, ... ('-' reads standard input)")
    transcribe.add_argument("--language", help="a Whisper language code such as en (default: VOICEKIT_ASR_LANGUAGE, "
                            "en; '' detects it)")
    transcribe.add_argument("--model", help="recognizer: tiny.en (bundled), large-v3-turbo, a hub id or a folder "
                            "(VOICEKIT_ASR_MODEL)")
    transcribe.add_argument("--preset", help="auto (default), cpu, gpu or laptop")
    transcribe.add_argument("--json", action="store_true", help="print text, language, duration, timings and "
                            "segments as JSON")
    transcribe.set_defaults(run=run_transcribe)

    voices = commands.add_parser("voices", help="list the voices (by family), or fetch a family's voices once")
    voices.add_argument("--preset", help="auto (default), cpu, gpu or laptop")
    voices.add_argument("--fetch", choices=_fetchable_families(), help="download a voice family's voices into the "
                        "Hugging Face cache (kokoro: the 28 English ones; then every preset offers them)")
    voices.set_defaults(run=run_voices)

    upgrade = commands.add_parser("upgrade", help="download better models once: Qwen2.5-0.5B-Instruct (0.4 GB) + "
                                  "Kokoro's 28 English voices (15 MB); then `auto` picks the laptop preset")
    upgrade.add_argument("--check", action="store_true", help="only say whether they are in the cache (no network; "
                         "exit status 1 when not)")
    upgrade.set_defaults(run=run_upgrade)

    serve = commands.add_parser("serve", help="serve the web page and the HTTP API on one port (as app.py does)")
    serve.add_argument("--host", help="interface to listen on (VOICEKIT_HOST; default 127.0.0.1, 0.0.0.0 on pods)")
    serve.add_argument("--port", type=int, help="port (VOICEKIT_PORT; default 7860)")
    serve.add_argument("--concurrency", type=int,
                       help="page requests run at once per event (VOICEKIT_CONCURRENCY; default 1 cpu, 4 gpu)")
    serve.add_argument("--preset", help="auto (default), cpu or gpu (VOICEKIT_PRESET)")
    serve.set_defaults(run=run_serve)

    doctor = commands.add_parser("doctor", help="check Python, torch, CUDA, nvidia-smi and vLLM; explain the preset")
    doctor.set_defaults(run=run_doctor)

    config = commands.add_parser("config", help="print the resolved settings (secrets masked), or the settings docs")
    config.add_argument("--preset", help="auto (default), cpu or gpu")
    config.add_argument("--markdown", action="store_true", help="print docs/CONFIGURATION.md, made from the schema")
    config.set_defaults(run=run_config)

    bench = commands.add_parser("bench", help="measure latency and speed, write JSON")
    bench.add_argument("what", choices=("pipeline", "snac", "llm", "load", "soak", "talk", "capacity"),
                       help="what to measure")
    bench.add_argument("--json", metavar="FILE", help="where to write the results (required; capacity: default "
                       "capacity.json)")
    bench.add_argument("--preset", help="auto (default), cpu or gpu")
    bench.add_argument("--repeats", type=int, default=3, help="runs per case (default 3)")
    bench.add_argument("--quick", action="store_true", help="fewer cases, for a smoke test")
    bench.add_argument("--frames", type=int, default=48, help="snac: frames to decode (default 48)")
    bench.add_argument("--device", help="snac: cpu or cuda (default: cuda when available)")
    bench.add_argument("--streams", type=int, default=1, help="snac: also N concurrent streams, batched or not")
    bench.add_argument("--upstream-window", action="store_true", help="snac: also time upstream's 4-frame window")
    bench.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="snac: timer (default: wall)")
    bench.add_argument("--threads", type=int, help="snac: torch CPU threads; llm: llama.cpp threads")
    bench.add_argument("--gguf", help="llm: a GGUF file to time")
    bench.add_argument("--url", help="load, soak, capacity: the running voicekit server (e.g. "
                       "http://127.0.0.1:7860)")
    bench.add_argument("--clients", type=int, default=8, help="load: clients at once (default 8)")
    bench.add_argument("--requests", type=int, default=5, help="load: requests per client (default 5)")
    bench.add_argument("--drop-every", type=int, default=5, help="load: every Nth request hangs up (default 5)")
    bench.add_argument("--api-key", help="load: the server's API key or password (default VOICEKIT_API_KEY)")
    bench.add_argument("--minutes", type=float, default=10.0, help="soak: how long to keep the load on (default 10)")
    bench.add_argument("--shape", action="append", help="llm: time a model of this shape with random weights "
                       "(qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m; repeatable)")
    bench.add_argument("--browser", action="store_true", help="talk: also the first sound in chromium "
                       "(Gradio's player and the Talk page's; needs playwright)")
    bench.add_argument("--room", choices=("headset", "speaker", "pauses"), help="talk: a room instead of the "
                       "plain turns: headset (latency from the last word, words heard, voices the kit does not "
                       "speak in), speaker (echo, self-interruptions, interruptions over the echo), pauses (pauses "
                       "mid-sentence, 'Yes.'); --repeats trials of each (20 for the published figures)")
    _add_capacity_options(bench)
    bench.set_defaults(run=run_bench)
    return parser


def _add_capacity_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--max-level", type=int, default=32, help="capacity: the most listeners or talkers at "
                       "once (default 32; steps 1, 2, 3, 4, 6, 8, 12, ...)")
    bench.add_argument("--step-seconds", type=float, default=30.0, help="capacity: how long each step holds its "
                       "load (default 30)")
    bench.add_argument("--kinds", default="streams,sessions", help="capacity: streams (chat and speech over HTTP), "
                       "sessions (spoken realtime), or both (default)")
    bench.add_argument("--p95-factor", type=float, default=1.5, help="capacity: a step fails when p95 first audio "
                       "passes this many times the one-listener figure (default 1.5)")
    bench.add_argument("--p95-bound", type=float, help="capacity: or past this many seconds, instead")
    bench.add_argument("--gap-tolerance", type=float, default=0.1, help="capacity: an admitted stream whose audio "
                       "gaps add up past this many seconds played slower than real time (default 0.1)")
    bench.add_argument("--save", action="store_true", help="capacity: also write it where VOICEKIT_MAX_RUNNING=auto "
                       "reads it (VOICEKIT_CAPACITY_FILE, else ~/.cache/voicekit/capacity-<preset>.json)")


def _add_common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--voice", help="voice name (see `voices`)")
    command.add_argument("--preset", help="auto (default), cpu or gpu")


def _fetchable_families() -> tuple[str, ...]:
    """Voice families that can download their voices (the registry's records with a `fetch`)."""
    import voicekit.builtin  # noqa: F401 (registers the built-in families)
    from voicekit.registry import VOICE_FAMILIES

    return tuple(family.name for family in VOICE_FAMILIES if family.fetch is not None)


def _read_text(value: str, preset: str | None, what: str) -> str:
    """The text argument ('-': standard input), checked before any model loads so mistakes fail fast."""
    from voicekit.build import resolve_settings
    from voicekit.pipeline import check_text

    text = sys.stdin.read() if value == "-" else value
    check_text(text, resolve_settings(preset).max_text_chars, what)
    return text


def run_say(args: argparse.Namespace) -> int:
    """`say`: speak a text to a WAV file."""
    import voicekit

    text = _read_text(args.text, args.preset, "text")
    with voicekit.load(args.preset, chat=False) as kit:
        reply = kit.say(text, voice=args.voice)
        path = reply.save(args.output)
        print(f"wrote {path} ({reply.timings.audio_s:.2f} s of audio, {len(reply.sentences)} sentence(s), "
              f"first audio after {reply.timings.ttfa_s or 0:.2f} s)")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """`chat`: print the reply, save its audio, print the timings."""
    import voicekit

    message = _read_text(args.message, args.preset, "message")
    with voicekit.load(args.preset) as kit:
        reply = kit.chat(message, voice=args.voice, mode=args.mode)
        path = reply.save(args.output)
        timings = reply.timings.as_dict()
        if args.json:
            print(json.dumps({"reply": reply.text, "output": str(path), "timings": timings}))
        else:
            print(reply.text)
            print(f"\nwrote {path}")
            print(f"{reply.timings.line()} · {len(reply.sentences)} sentence(s) · total {reply.timings.total_s:.2f} s")
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    """`transcribe`: the recognizer alone (build_transcriber), on a file decoded before the model loads."""
    from voicekit.build import build_transcriber, resolve_settings
    from voicekit.listening.asr import read_audio

    settings = resolve_settings(args.preset, asr_model=args.model)
    samples, rate = read_audio(sys.stdin.buffer.read() if args.file == "-" else args.file)
    transcriber = build_transcriber(settings)
    try:
        language = settings.asr_language if args.language is None else args.language
        transcript = transcriber.transcribe(samples, rate, language or None)
    finally:
        transcriber.close()
    print(json.dumps(transcript.as_dict()) if args.json else transcript.text)
    return 0


def run_voices(args: argparse.Namespace) -> int:
    """`voices`: one voice per line with its family and what it is, the default marked; `--fetch FAMILY`."""
    import voicekit

    if args.fetch:
        from voicekit.build import resolve_settings
        from voicekit.registry import VOICE_FAMILIES

        logging.getLogger().setLevel(logging.INFO)  # huggingface_hub draws its progress bars meanwhile
        fetch = VOICE_FAMILIES[args.fetch].fetch
        assert fetch is not None  # argparse offers only the families that can fetch
        fetch(resolve_settings(args.preset))
        return 0
    with voicekit.load(args.preset, chat=False) as kit:
        for voice in kit.voices:
            marker = "  (default)" if voice == kit.default_voice else ""
            print(f"{voice:<22} {voice.family:<8} {voice.description}{marker}")
        if kit.tags:
            print(f"emotion tags: {' '.join(kit.tags)}")
    return 0


def run_upgrade(args: argparse.Namespace) -> int:
    """`upgrade`: fetch the better models' bundle with a progress bar (Ctrl-C keeps nothing half-downloaded)."""
    from voicekit import upgrade
    from voicekit.settings import Settings

    found = upgrade.status()
    if args.check or found.ready:
        print(found.line())
        return 0 if found.ready else 1
    bar = ProgressBar()
    try:
        found = upgrade.download(Settings.resolve("cpu").token, on_progress=bar)
    finally:
        bar.end()
    print(found.line())
    print("next: python app.py (or python -m voicekit serve): `auto` now starts the laptop preset, offline too")
    return 0


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal (elsewhere: a line per stage and every 10%)."""

    def __init__(self, width: int = 30) -> None:
        self.width, self.tty = width, sys.stderr.isatty()
        self.shown: tuple[str, int] = ("", -1)
        self.drawn = False

    def __call__(self, event: Any) -> None:
        filled = int(event.fraction * self.width)
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {event.line()}" if event.total_bytes else event.line()
        if self.tty:
            print(f"\r{text[:160]:<160}", end="", file=sys.stderr, flush=True)
            self.drawn = True
        elif (event.stage, int(event.fraction * 10)) != self.shown:
            self.shown = (event.stage, int(event.fraction * 10))
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        """Leave the bar's line."""
        if self.drawn:
            print(file=sys.stderr)


def run_doctor(args: argparse.Namespace) -> int:
    """`doctor`: print the environment diagnosis."""
    from voicekit.doctor import diagnose, format_report

    report = diagnose()
    print(format_report(report))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """`serve`: load the kit, serve the page and the API until interrupted."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "gradio") if importlib.util.find_spec(name) is None]
    if missing:  # before minutes of loading models
        raise VoicekitError(f"the server needs {', '.join(missing)}: pip install \"voicekit[serve]\" (in a "
                            "checkout: pip install -r requirements.txt)")
    logging.getLogger().setLevel(logging.INFO)  # the server logs each request and what it serves
    import voicekit
    from voicekit.serve import serve, serve_settings

    config = serve_settings(host=args.host, port=args.port, concurrency=args.concurrency)
    with voicekit.load(args.preset) as kit:
        serve(kit, config)
    return 0


def run_config(args: argparse.Namespace) -> int:
    """`config`: the settings this machine resolves to (JSON, secrets masked), or the generated settings docs."""
    from voicekit.build import resolve_settings
    from voicekit.config_doc import configuration_markdown

    if args.markdown:
        print(configuration_markdown(), end="")
    else:
        print(json.dumps(resolve_settings(args.preset).public_dict(), indent=2))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`bench`: run a benchmark and write its JSON."""
    if args.json is None and args.what != "capacity":
        raise VoicekitError(f"bench {args.what} needs --json FILE: where to write the results")
    if args.what == "capacity":
        return run_capacity(args)
    if args.what in ("load", "soak"):
        import os

        from voicekit.bench.load import run_load_bench, run_soak

        if not args.url:
            raise VoicekitError(f"bench {args.what} needs --url of a running voicekit server "
                                "(python -m voicekit serve)")
        key = args.api_key or os.environ.get("VOICEKIT_API_KEY")
        results: Any = (run_load_bench(args.url, args.clients, args.requests, args.drop_every, key)
                        if args.what == "load" else
                        run_soak(args.url, args.minutes, args.clients, args.requests, args.drop_every, key))
    elif args.what == "talk":
        from voicekit.bench.talk import run_talk_bench

        results = run_talk_bench(preset=args.preset, repeats=args.repeats, browser=args.browser, room=args.room)
    elif args.what == "llm":
        from voicekit.bench.llm import run_llm_bench

        results = run_llm_bench(args.gguf, args.shape, repeats=args.repeats, threads=args.threads)
    elif args.what == "snac":
        from voicekit.bench import run_snac_bench

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        results = run_snac_bench(args.frames, args.device, args.repeats, streams=args.streams,
                                      upstream_window=args.upstream_window, clock=args.clock)
    else:
        from voicekit.bench import run_pipeline_bench

        results = run_pipeline_bench(preset=args.preset, repeats=args.repeats, quick=args.quick)
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {args.json}")
    return 0


def run_capacity(args: argparse.Namespace) -> int:
    """`bench capacity`: ramp the load on a running server; write capacity.json, its plot, and with --save the file
    `VOICEKIT_MAX_RUNNING=auto` reads."""
    import os
    from pathlib import Path

    from voicekit.bench.capacity import Bound, plot_capacity, run_capacity_bench
    from voicekit.serve.admission import capacity_path

    if not args.url:
        raise VoicekitError("bench capacity needs --url of a running voicekit server (python -m voicekit serve, "
                        "with generous limits: VOICEKIT_MAX_RUNNING=64)")
    kinds = tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    bound = Bound(p95_factor=args.p95_factor, p95_s=args.p95_bound, gap_tolerance_s=args.gap_tolerance)
    try:
        results = run_capacity_bench(args.url, kinds, args.max_level, args.step_seconds, bound,
                                     args.api_key or os.environ.get("VOICEKIT_API_KEY"))
    except ValueError as error:
        raise VoicekitError(str(error)) from None
    path = Path(args.json or "capacity.json")
    targets = [path, capacity_path(results["preset"] or "cpu")] if args.save else [path]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {target}")
    print(f"wrote {plot_capacity(results, path.with_suffix('.png'))}")
    print("sustainable: " + ", ".join(f"{kind} {count}" for kind, count in results["sustainable"].items()
                                      if count is not None))
    return 0
