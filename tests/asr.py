"""What a speech recognizer (Whisper tiny.en on faster-whisper, the `whisper` fixture) hears in test speech."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from voicekit.audio import resample
from voicekit.bench.talk_room import word_accuracy  # the bench's count: punctuation dropped, "4" is "four"

__all__ = ["heard", "word_accuracy"]


def heard(whisper: Any, samples: Any, sample_rate: int) -> str:
    """The words Whisper hears in float32 mono speech: lowercase, no punctuation."""
    audio = resample(np.asarray(samples, dtype=np.float32), sample_rate, 16000)
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1)
    return " ".join(re.findall(r"[a-z']+", " ".join(segment.text for segment in segments).lower()))
