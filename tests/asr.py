"""What a speech recognizer (Whisper tiny.en on faster-whisper, the `whisper` fixture) hears in test speech."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from voicekit.audio import resample


def heard(whisper: Any, samples: Any, sample_rate: int) -> str:
    """The words Whisper hears in float32 mono speech: lowercase, no punctuation."""
    audio = resample(np.asarray(samples, dtype=np.float32), sample_rate, 16000)
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1)
    return " ".join(re.findall(r"[a-z']+", " ".join(segment.text for segment in segments).lower()))


def word_accuracy(expected: str, got: str) -> float:
    """Share of the expected words that were heard, in order (a longest common subsequence of words)."""
    want, have = re.findall(r"[a-z']+", expected.lower()), got.split()
    table = [[0] * (len(have) + 1) for _ in range(len(want) + 1)]
    for i, word in enumerate(want):
        for j, other in enumerate(have):
            table[i + 1][j + 1] = table[i][j] + 1 if word == other else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1] / max(1, len(want))
