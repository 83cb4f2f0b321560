"""The wiring: settings -> engines -> speech backend and chat model -> pipeline -> kit, top to bottom.

This is the one place that reads `Settings` to build parts. Engines and backends below it take plain arguments, so a
test or a user can build any of them by hand (or pass their own to `load()`). Three modules serve it:
voicekit/placement.py decides where each part runs on this machine (the `auto` preset, the engines, Whisper's device,
the GPU memory split), voicekit/registry.py holds one record per voice family and engine, and voicekit/builtin.py
registers the built-in ones. Which model runs on which engine:

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

import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicekit import device
from voicekit.builtin import build_engine
from voicekit.chat import ChatModel
from voicekit.engines.base import Engine, SamplingSettings
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import ModelUnavailableError, SettingsError
from voicekit.kit import Kit
from voicekit.pipeline import Pipeline
from voicekit.placement import (
    asr_device,
    chat_engine_choice,
    check_memory_shares,
    choose_preset,
    gpu_memory_shares,
    gpu_sized,
    vllm_memory_shares,
    with_memory_plan,
)
from voicekit.registry import VOICE_FAMILIES
from voicekit.settings import Settings
from voicekit.tts.base import SpeechBackend

if TYPE_CHECKING:
    from voicekit.listening.asr import Transcriber

log = logging.getLogger("voicekit")

CPU_FALLBACK_MODELS = ("base", "tiny.en")  # the recognizer on the CPU when the GPU cannot run it, first that loads


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
    voices on this machine (voicekit/tts/catalogue.py says how voices route). Families are looked up in the
    registry: an unknown name is a `SettingsError` listing the known ones."""
    family = VOICE_FAMILIES[settings.tts]
    offered = [VOICE_FAMILIES[name] for name in settings.extra_voices if name != settings.tts]
    refused = [extra.name for extra in offered if not extra.extra_ok]
    if refused:
        allowed = ", ".join(extra.name for extra in VOICE_FAMILIES if extra.extra_ok)
        raise SettingsError(f"extra_voices may name {allowed}, not {', '.join(refused)}")
    extras = [backend for backend in (extra.build(settings, None, True) for extra in offered) if backend is not None]
    if not extras:
        return family.build(settings, settings.voice or None, False)
    from voicekit.tts.catalogue import VoiceCatalogue

    return VoiceCatalogue([family.build(settings, None, False), *extras], default_voice=settings.voice or None)


# -- the speech recognizer ---------------------------------------------------------------------------------


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


def planned_recognizer(settings: Settings) -> dict[str, Any]:
    """The recognizer the settings will load (`loaded` False), for what a kit says before its first use."""
    where = asr_device(settings)
    compute = settings.asr_compute_type
    if compute in ("", "default"):
        compute = "int8" if where == "cpu" else "float16"
    return {"model": settings.asr_model or "tiny.en", "device": where, "compute_type": compute, "loaded": False,
            "fallback_reason": None}


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
    return {"recognizer": kit.recognizer_facts(), "vllm_engines": engines,
            "gpu": memory.as_dict() if memory is not None else None}


# -- the kit ----------------------------------------------------------------------------------------------


def resolve_settings(preset: str | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """`Settings.resolve()`, with the preset `auto` (the default) decided for this machine (placement.choose_preset)."""
    return Settings.resolve(preset, env, auto=choose_preset, **overrides)


def build_kit(settings: Settings, *, chat: bool = True, engine: Engine | None = None,
              backend: SpeechBackend | None = None) -> Kit:
    """Load the models of `settings` (or use the given `engine` for chat, `backend` for speech) into a Kit.

    Everything is built on the kit's own event loop: engines such as vLLM's AsyncLLM bind to the loop that
    creates them. `chat=False` loads only the speech side (for `say` alone).
    """
    if settings.cache_dir:
        os.environ.setdefault("HF_HOME", settings.cache_dir)
    check_memory_shares(gpu_memory_shares(settings))
    if vllm_memory_shares(settings) and not settings.kv_cache_bytes:  # the card's size decides the split
        settings = with_memory_plan(settings, device.cuda_total_memory())
    loop = EventLoopThread()
    try:
        pipeline = build_pipeline(settings, loop, chat=chat, engine=engine, backend=backend)
    except BaseException:
        loop.close()
        raise
    return Kit(settings, pipeline, loop, description=describe(settings, pipeline.tts, pipeline.chat_model),
               recognizer=lambda: build_transcriber(settings), recognizer_plan=planned_recognizer(settings),
               switcher=functools.partial(switch_parts, loop=loop))


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
    plain = Settings.resolve(settings.preset, env={})  # the old preset's own values
    kept = {name: getattr(settings, name) for name in Settings.model_fields
            if name != "preset" and getattr(settings, name) != getattr(plain, name)}
    kept.update({name: getattr(settings, name) for name in Settings.model_fields if name.startswith("asr_")})
    return Settings.resolve(preset, env={}, **{**kept, **overrides})


def switch_parts(settings: Settings, preset: str, overrides: Mapping[str, Any], chat: bool, *,
                 loop: EventLoopThread) -> tuple[Settings, Pipeline, dict[str, str]]:
    """What a running kit switches to (`Kit.switch_preset`): the settings, the pipeline built on the kit's `loop`,
    and its description."""
    switched = switched_settings(settings, preset, **overrides)
    pipeline = build_pipeline(switched, loop, chat=chat)
    return switched, pipeline, describe(switched, pipeline.tts, pipeline.chat_model)


def load(preset: str | None = None, *, chat: bool = True, engine: Engine | None = None,
         backend: SpeechBackend | None = None, **overrides: Any) -> Kit:
    """Resolve the settings (preset, VOICEKIT_* environment, `overrides`) and build the kit."""
    return build_kit(resolve_settings(preset, **overrides), chat=chat, engine=engine, backend=backend)


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
