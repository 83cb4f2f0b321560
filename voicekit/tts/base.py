"""The protocol every speech backend implements (Piper, Orpheus, later Qwen3-TTS).

A backend speaks one already-cleaned sentence (or short text) in one voice and streams float32 mono
chunks in [-1, 1] at `sample_rate`. Splitting long text, cleaning and timing are the pipeline's job.
Blocking work (ONNX, torch) must run off the event loop (for example `asyncio.to_thread`), and closing
the iterator early must stop the work and abort any engine request behind it.

A backend that generates on an engine also has `async failure() -> str | None` (see `Engine.failure`);
`speech_failure()` reads it, and treats a backend without one (Piper: no engine to die) as healthy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from voicekit.errors import UnknownVoiceError


@runtime_checkable
class SpeechBackend(Protocol):
    """A text-to-speech backend."""

    name: str
    sample_rate: int
    default_voice: str
    #: Inline tags the model honours, e.g. "<laugh>"; empty when tags are not supported (they are stripped).
    tags: Sequence[str]

    @property
    def voices(self) -> list[str]:
        """Names of the voices this backend can speak in."""
        ...

    def resolve(self, voice: str | None) -> str:
        """Canonical voice name (None: the default); raises UnknownVoiceError listing the voices."""
        ...

    def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """Stream float32 mono audio chunks for `text` spoken in `voice`."""
        ...

    async def close(self) -> None:
        """Release models and worker threads."""
        ...


async def speech_failure(backend: Any) -> str | None:
    """Why `backend` can no longer speak (its engine died or its server is gone), or None."""
    failure = getattr(backend, "failure", None)
    return await failure() if failure is not None else None


def resolve_voice(voice: str | None, voices: Sequence[str], default: str, aliases: dict[str, str] | None = None) -> str:
    """Return the canonical voice name for `voice` (None means the default), or raise UnknownVoiceError."""
    if voice is None or not voice.strip():
        return default
    wanted = voice.strip()
    if wanted in voices:
        return wanted
    lowered = {name.lower(): name for name in voices}
    if wanted.lower() in lowered:
        return lowered[wanted.lower()]
    if aliases and wanted.lower() in aliases:
        return aliases[wanted.lower()]
    raise UnknownVoiceError(wanted, list(voices))
