"""voicekit: talk with a language model out loud.

    import voicekit
    kit = voicekit.load()                 # preset "auto": gpu when CUDA + vLLM work, else the bundled CPU models
    print(kit.voices)
    kit.say("Hello there!").save("hello.wav")
    reply = kit.chat("Tell me a fun fact.")
    for chunk in reply:                   # AudioChunk: float32 samples at kit.sample_rate, streamed
        ...
    print(reply.text, reply.timings)

    kit = voicekit.connect("http://127.0.0.1:7860")   # the same API, spoken by a running voicekit server
    kit = voicekit.open_kit()             # a server on this machine when one answers (a pod), else load()
    kit = voicekit.load(engine=my_engine, backend=my_backend)   # your own Engine / SpeechBackend

Heavy modules (llama.cpp, Piper, torch, vLLM, FastAPI, Gradio) load only when something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voicekit.engines.base import Engine
from voicekit.errors import (
    EmptyTextError,
    ModelUnavailableError,
    NoAudioError,
    SettingsError,
    TextTooLongError,
    UnknownVoiceError,
    VoicekitError,
)
from voicekit.kit import AsyncReply, Kit, Reply
from voicekit.pipeline import AudioChunk, Timings
from voicekit.settings import ServeSettings, Settings
from voicekit.tts.base import SpeechBackend

if TYPE_CHECKING:
    from voicekit.client import RemoteKit

__version__ = "0.1.0"

__all__ = [
    "AsyncReply",
    "AudioChunk",
    "EmptyTextError",
    "Engine",
    "Kit",
    "ModelUnavailableError",
    "NoAudioError",
    "Reply",
    "ServeSettings",
    "Settings",
    "SettingsError",
    "SpeechBackend",
    "TextTooLongError",
    "Timings",
    "UnknownVoiceError",
    "VoicekitError",
    "__version__",
    "connect",
    "load",
    "open_kit",
]


def load(preset: str | None = None, *, chat: bool = True, engine: Engine | None = None,
         backend: SpeechBackend | None = None, **overrides: Any) -> Kit:
    """Load a kit: `preset` is "auto" (default, or VOICEKIT_PRESET), "cpu" or "gpu"; overrides name Settings
    fields. `engine` runs the chat model and `backend` speaks instead of the preset's (anything that follows
    the `Engine` / `SpeechBackend` protocols); `chat=False` loads only the speech side."""
    from voicekit.build import load as _load

    return _load(preset, chat=chat, engine=engine, backend=backend, **overrides)


def connect(url: str | None = None, api_key: str | None = None, **options: Any) -> RemoteKit:
    """A kit that talks to a running voicekit server over its HTTP API (`url` default: VOICEKIT_URL).

    Same surface as a loaded kit (`voices`, `say`, `chat`, sync and async, streamed chunks, timings, history),
    without loading models here: a notebook beside the page on a GPU pod shares the server's GPU.
    """
    from voicekit.client import connect as _connect

    return _connect(url, api_key, **options)


def open_kit(preset: str | None = None, *, url: str | None = None, api_key: str | None = None,
             **overrides: Any) -> Kit | RemoteKit:
    """`connect()` to a voicekit server when one answers (`url`, VOICEKIT_URL, or this machine), else `load()`."""
    from voicekit.client import open_kit as _open_kit

    return _open_kit(preset, url=url, api_key=api_key, **overrides)
