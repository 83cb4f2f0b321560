"""Speech for the room tests in more than one voice: Piper's joe (the voice the kit answers in) and Kokoro's voices
(users the project does not speak as), at the socket's 24 kHz, with helpers to pause inside a sentence."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.audio import resample
from voicekit.listening.vad import SileroVAD

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


def stretch_pause(audio: np.ndarray, pause_s: float) -> tuple[np.ndarray, float]:
    """Make the longest silence inside the speech (a comma's) `pause_s` long; returns the audio and where the pause
    begins (seconds). The voice reads the whole sentence, so the words before the pause sound unfinished."""
    at_16k = resample(audio, RATE, 16000)
    speaking = SileroVAD().probabilities(at_16k) >= 0.5
    first, last = np.flatnonzero(speaking)[[0, -1]]
    best, start, run = (0, first), first, 0
    for index in range(first, last):
        run = run + 1 if not speaking[index] else 0
        if run == 1:
            start = index
        if run > best[0]:
            best = (run, start)
    frame = 512 * RATE // 16000
    begin = best[1] * frame
    end = begin + best[0] * frame
    middle = np.zeros(int(pause_s * RATE), np.float32)
    return np.concatenate([audio[:begin], middle, audio[end:]]), begin / RATE


def with_silence(audio: np.ndarray, before_s: float = 0.5, after_s: float = 1.5) -> np.ndarray:
    """`audio` with silence around it, as a microphone hears a turn."""
    return np.concatenate([np.zeros(int(before_s * RATE), np.float32), audio.astype(np.float32),
                           np.zeros(int(after_s * RATE), np.float32)])
