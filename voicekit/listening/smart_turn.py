"""Semantic end of turn: Smart Turn v3.2 (Daily, BSD-2-Clause) on onnxruntime, the words heard so far, and the
eagerness policy around them.

The model hears the last 8 s of a turn and says how likely it is that the speaker has finished: a falling
"...at eight tonight." scores high, a hanging "I would like to order..." low. The VAD finds the pauses; this model
decides which of them end the turn. Its ONNX file ships in this package (assets/, copied unchanged from the
pipecat-ai 1.14.0 wheel; licence beside it).

The model hears prosody, and a synthetic or flat voice can sound finished mid-sentence ("Please book a table
for..." scored complete in every voice tried). The transcript made at the same pause settles those: English does not
end on "the", "and" or "um", nor, outside a question, on "for" or "is" (`sounds_unfinished`); and "I would like to
order." usually goes on (`may_go_on`: waited for, less long).

Preprocessing is pipecat's and the model's training script's, reproduced without transformers or torch: the last
8 s at 16 kHz, zero-padded at the front, normalised to zero mean and unit variance, then Whisper's 80-bin log-mel
(faster-whisper's numpy extractor, with no extra padding). Measured equal to pipecat's own analyzer.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

SAMPLE_RATE = 16000
WINDOW_S = 8
WINDOW = WINDOW_S * SAMPLE_RATE  # 128000 samples -> 800 feature frames
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
Eagerness = Literal["low", "medium", "high", "auto"]
EAGERNESS: tuple[str, ...] = ("low", "medium", "high", "auto")


def bundled_model_path() -> Path:
    """The Smart Turn v3.2 ONNX file inside this package."""
    return Path(__file__).parent / "assets" / MODEL_FILE


@functools.cache
def _inference_session(path: str) -> Any:
    """One onnxruntime session per model file for the whole process; `run()` is safe from several threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1  # two threads were slower than one on 2 cores (and other sessions need one)
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)


@functools.cache
def _feature_extractor() -> Any:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=WINDOW_S,
                            n_fft=400)


def features(audio: np.ndarray) -> np.ndarray:
    """The model's input for a turn: (80, 800) float32 log-mel features of its last 8 s (16 kHz float32 audio)."""
    window = np.asarray(audio, dtype=np.float32).reshape(-1)[-WINDOW:]
    window = np.pad(window, (WINDOW - len(window), 0))
    window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    # padding=0: faster-whisper pads 160 samples for recognition by default; Smart Turn was trained without them
    return _feature_extractor()(window, padding=0).astype(np.float32)


class SmartTurn:
    """P(the turn is complete) of 16 kHz float32 audio: the turn from its start (a little before the first word) up
    to now, the pause included. One instance may serve every session (the model is loaded once per process)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._session = _inference_session(str(path or bundled_model_path()))
        self._input = self._session.get_inputs()[0].name

    def probability(self, audio: np.ndarray) -> float:
        """How likely it is that the speaker has finished (0 to 1; the model's own cut is 0.5)."""
        output = self._session.run(None, {self._input: features(audio)[np.newaxis]})[0]
        return float(np.asarray(output).reshape(-1)[0])


@dataclass(frozen=True)
class EndOfTurnPolicy:
    """How long a pause must last to end the turn, given the model's verdict at the pause.

    The model is asked once per pause, after `ask_s` of silence (later asks drift towards "complete": the silence
    itself starts to sound like an ending). At or above `threshold` the turn ends there; below it the turn ends
    after a silence that grows as the verdict falls, up to `max_wait_s` for a turn the model is sure is unfinished.
    """

    threshold: float = 0.5
    ask_s: float = 0.2
    max_wait_s: float = 4.0

    def silence_to_end(self, probability: float) -> float:
        """Seconds of silence (counted from the last word) after which a turn with this verdict ends."""
        if probability >= self.threshold:
            return self.ask_s
        return self.ask_s + (self.max_wait_s - self.ask_s) * (1.0 - probability / self.threshold)

    @classmethod
    def for_eagerness(cls, eagerness: str) -> EndOfTurnPolicy:
        """OpenAI's semantic_vad eagerness: `low` waits longest for the user to go on, `high` answers soonest;
        `auto` is `medium`. Their longest waits are OpenAI's (8, 4 and 2 s)."""
        if eagerness not in EAGERNESS:
            raise ValueError(f"eagerness must be one of {', '.join(EAGERNESS)}, not {eagerness!r}")
        return {"low": cls(0.8, 0.3, 8.0), "high": cls(0.4, 0.2, 2.0)}.get(eagerness, cls(0.5, 0.2, 4.0))


# Words an English utterance does not end with (a trailing "Where are you from?" is a question: see below).
_NEVER_LAST = frozenset({
    "a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "this", "these", "those", "some", "every",
    "and", "or", "but", "nor", "because", "although", "though", "whereas", "if", "unless", "than",
    "um", "uh", "er", "erm", "uhm", "hmm"})
_ONLY_LAST_IN_QUESTIONS = frozenset({
    "for", "to", "of", "with", "at", "in", "on", "about", "from", "into", "onto", "by", "like",
    "is", "are", "was", "were", "am", "be", "been", "will", "would", "shall", "should", "can", "could", "may", "might",
    "must"})
_WORDS = re.compile(r"[a-z0-9']+")  # numbers are words: "Meet me at 5." ends on 5, not on at
# Verbs that, after "to", nearly always take what is ordered, booked or bought next ("I would like to order ...").
_WANTS_AN_OBJECT = frozenset({
    "order", "book", "buy", "get", "make", "reserve", "add", "bring", "send", "find", "give", "take", "rent", "pick",
    "cancel", "change", "schedule", "ask", "tell", "show", "play", "set", "put", "check"})


def sounds_unfinished(transcript: str) -> bool:
    """True when the words heard so far cannot be a whole English utterance: they trail off ("..."), end with an
    article, a conjunction, a possessive or a filler, or, outside a question, with a preposition or a verb that needs
    more ("Please book a table for.", "So what I was thinking is"). False when they could be whole."""
    text = transcript.strip().lower()
    words = _WORDS.findall(text)
    if not words:
        return False
    if text.endswith(("...", "…")):
        return True
    last = words[-1]
    return last in _NEVER_LAST or (last in _ONLY_LAST_IN_QUESTIONS and not text.endswith("?"))


def may_go_on(transcript: str) -> bool:
    """True when the words could be whole but usually go on: outside a question, they end on "to" and a verb that
    takes an object ("I would like to order.", "I need to book"). Weaker than `sounds_unfinished`: "Yes, I would
    like to order." can be a whole answer, so such a pause waits less."""
    text = transcript.strip().lower()
    words = _WORDS.findall(text)
    return len(words) >= 2 and words[-2] == "to" and words[-1] in _WANTS_AN_OBJECT and not text.endswith("?")


def sounds_whole(transcript: str) -> bool:
    """True when the words end as a whole sentence does: closing punctuation (not a trailing "..."), and nothing
    `sounds_unfinished` or `may_go_on` hears ("So what I was thinking is we could leave early.", "Yes.")."""
    text = transcript.strip().rstrip("\"'”’)")
    if not _WORDS.findall(text.lower()) or not text.endswith((".", "?", "!")) or text.endswith(("...", "…")):
        return False
    return not sounds_unfinished(text) and not may_go_on(text)
