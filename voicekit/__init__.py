"""voicekit: talk with a language model out loud.

    import voicekit
    kit = voicekit.load()                 # preset "auto": gpu when CUDA + vLLM work, else the bundled CPU models
    print(kit.voices)
    kit.say("Hello there!").save("hello.wav")
    reply = kit.chat("Tell me a fun fact.")
    for chunk in reply:                   # AudioChunk: float32 samples at kit.sample_rate, streamed
        ...
    print(reply.text, reply.timings)

Heavy modules (llama.cpp, Piper, torch, vLLM) load only when `load()` needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voicekit.errors import (
    EmptyTextError,
    ModelUnavailableError,
    NoAudioError,
    SettingsError,
    TextTooLongError,
    UnknownVoiceError,
    VoicekitError,
)

if TYPE_CHECKING:
    from voicekit.kit import Kit

__version__ = "0.1.0"

__all__ = [
    "EmptyTextError",
    "ModelUnavailableError",
    "NoAudioError",
    "SettingsError",
    "TextTooLongError",
    "UnknownVoiceError",
    "VoicekitError",
    "__version__",
    "load",
]


def load(preset: str | None = None, **overrides: Any) -> Kit:
    """Load a kit: `preset` is "auto" (default, or VOICEKIT_PRESET), "cpu" or "gpu"; overrides name Settings fields."""
    from voicekit.loader import load as _load

    return _load(preset, **overrides)
