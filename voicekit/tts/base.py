"""The protocol every speech backend implements (Piper, Orpheus, Qwen3-TTS), and the base they share.

A backend speaks one already-cleaned sentence (or short text) in one voice and streams float32 mono
chunks in [-1, 1] at `sample_rate`. Splitting long text, cleaning and timing are the pipeline's job.
Blocking work (ONNX, torch) must run off the event loop (for example `asyncio.to_thread`), and closing
the iterator early must stop the work and abort any engine request behind it.

A backend that generates on an engine also has `async failure() -> str | None` (see `Engine.failure`);
`speech_failure()` reads it, and treats a backend without one (Piper: no engine to die) as healthy.
`BackendBase` holds what every backend does the same way: its voices, the default, aliases, `resolve()`.
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


class BackendBase:
    """Voices, the default voice, aliases and `resolve()`, shared by the backends; `close()` does nothing.

    Subclasses set `name`, `sample_rate` and `tags`, call `_set_voices()` once they know their voices, and
    implement `synthesize()`.
    """

    name = "speech"
    sample_rate = 24000
    tags: Sequence[str] = ()
    default_voice = ""

    def _set_voices(self, voices: Sequence[str], default: str | None, fallback: str,
                    aliases: dict[str, str] | None = None) -> None:
        """The voices this backend speaks, its default (`default`, else `fallback`) and lowercase aliases."""
        self._voices, self._aliases = list(voices), dict(aliases or {})
        self.default_voice = resolve_voice(default, self._voices, fallback, self._aliases)

    @property
    def voices(self) -> list[str]:
        """Names of the voices this backend can speak in."""
        return list(self._voices)

    def resolve(self, voice: str | None) -> str:
        """Canonical voice name (case-insensitive, aliases too; None: the default); raises UnknownVoiceError."""
        return resolve_voice(voice, self._voices, self.default_voice, self._aliases)

    def about(self, voice: str) -> tuple[str, str]:
        """(language, a short description) of one of this backend's voices; unknown facts are empty."""
        return "", f"{self.name} voice {voice}"

    async def close(self) -> None:
        """Release models and worker threads (nothing to release here)."""


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
