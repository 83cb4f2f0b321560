"""Speech for the room tests in more than one voice: Piper's joe (the voice the kit answers in) and Kokoro's voices
(users the project does not speak as), at the socket's 24 kHz; `stretch_pause` (the bench's) pauses inside a
sentence."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.audio import resample
from voicekit.bench.talk_room import stretch_pause

__all__ = ["RATE", "speech", "stretch_pause", "with_silence"]

RATE = 24000


@functools.cache
def _kokoro(folder: str) -> Any:
    from voicekit.tts.kokoro import ENGLISH_VOICES, KokoroBackend, voices_for

    return KokoroBackend(voices_for(ENGLISH_VOICES, Path(folder), None, download=False))


def speech(kit: Any, text: str, voice: str = "en_US-joe-medium", kokoro_voices: Path | None = None) -> np.ndarray:
    """`text` spoken by `voice` (Piper's joe through the kit, or a Kokoro voice from `kokoro_voices`), 24 kHz."""
    if voice == "en_US-joe-medium" or kokoro_voices is None:
        return resample(kit.say(text, voice=voice).audio(), kit.sample_rate, RATE)
    backend = _kokoro(str(kokoro_voices))

    async def run() -> np.ndarray:
        return np.concatenate([chunk async for chunk in backend.synthesize(text, voice)])

    return resample(asyncio.run(run()), backend.sample_rate, RATE)


def with_silence(audio: np.ndarray, before_s: float = 0.5, after_s: float = 1.5) -> np.ndarray:
    """`audio` with silence around it, as a microphone hears a turn."""
    return np.concatenate([np.zeros(int(before_s * RATE), np.float32), audio.astype(np.float32),
                           np.zeros(int(after_s * RATE), np.float32)])
