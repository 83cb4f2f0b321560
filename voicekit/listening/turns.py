"""Turn-taking: when the user starts speaking, and when their turn is over.

`TurnDetector` reads Silero VAD scores of a live 16 kHz stream. Speech starts after `start_s` of speech frames
(a click or a breath is not speech; barge-in waits for this); the turn ends after `silence_s` without speech.
A turn shorter than `min_speech_s` of speech is dropped (a cough), one longer than `max_turn_s` is cut there.
After `pause_s` of silence the detector says the user paused (`SpeechPaused`, with the turn so far), so a listener
may start transcribing before the turn is over; when the turn then ends with no speech since, that work stands.
Times are seconds of audio since the stream began (not wall time: a client may send faster than real time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicekit.listening.vad import FRAME, FRAME_S, SileroVAD


@dataclass(frozen=True)
class TurnOptions:
    """How the detector decides; the defaults suit a person talking to an assistant."""

    threshold: float = 0.5  # a frame is speech at this probability...
    release: float = 0.35  # ...and stays speech, once speaking, down to this one (hysteresis)
    start_s: float = 0.1  # speech this long starts a turn (and may interrupt a reply)
    silence_s: float = 0.5  # silence this long ends it
    pause_s: float = 0.2  # silence this long is a pause: transcribing may start (0 or >= silence_s: never)
    min_speech_s: float = 0.25  # a turn with less speech than this is dropped
    prefix_s: float = 0.3  # audio kept from before the start, so the recognizer hears the first syllable
    max_turn_s: float = 30.0  # a turn is cut here (a TV in the background must not grow a buffer forever)


@dataclass(frozen=True)
class SpeechStarted:
    """The user started speaking at `at_s` (audio seconds)."""

    at_s: float


@dataclass(frozen=True)
class SpeechPaused:
    """The user has been silent for `pause_s` in turn number `turn`: `audio` is the turn so far (16 kHz), `speech_s`
    its speech. If the turn ends with the same `speech_s`, nothing was said since."""

    at_s: float
    audio: np.ndarray
    speech_s: float
    turn: int


@dataclass(frozen=True)
class SpeechStopped:
    """The user's turn ended at `at_s`; `audio` is the turn (16 kHz float32, prefix included), `speech_s` the
    speech in it. `kept` is False for a turn too short to answer (it was dropped)."""

    at_s: float
    audio: np.ndarray
    speech_s: float
    kept: bool
    turn: int = 0


TurnEvent = SpeechStarted | SpeechPaused | SpeechStopped


class TurnDetector:
    """Feed 16 kHz float32 audio with `push()`; it returns the turn events that audio completed."""

    def __init__(self, vad: SileroVAD, options: TurnOptions | None = None) -> None:
        self.vad = vad
        self.options = options or TurnOptions()
        self.frames = 0  # frames scored since the stream began
        self.turns = 0  # turns started since the stream began
        self._recent: list[np.ndarray] = []  # the frames before a turn, for its prefix
        self._turn: list[np.ndarray] | None = None  # frames of the turn in progress (None: not in a turn)
        self._speech_frames = 0
        self._silent_frames = 0
        self._started_at = 0
        self._candidate: list[np.ndarray] = []  # speech frames not yet long enough to start a turn
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def in_turn(self) -> bool:
        """True while the user is speaking (between SpeechStarted and SpeechStopped)."""
        return self._turn is not None

    @property
    def now_s(self) -> float:
        """Audio seconds scored so far."""
        return self.frames * FRAME_S

    def push(self, samples: np.ndarray) -> list[TurnEvent]:
        """Score the frames `samples` complete and return the events they bring."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        events: list[TurnEvent] = []
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            event = self._step(frame, self.vad.frame_probability(frame))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[TurnEvent]:
        """End a turn in progress now (the client committed its audio, or the stream ended)."""
        return [self._stop()] if self._turn is not None else []

    def reset(self) -> None:
        """Drop whatever was heard (the client cleared its input buffer); the clock keeps running."""
        self.vad.reset()
        self._turn, self._candidate, self._recent = None, [], []
        self._speech_frames = self._silent_frames = 0
        self._pending = np.zeros(0, dtype=np.float32)

    def _step(self, frame: np.ndarray, probability: float) -> TurnEvent | None:
        self.frames += 1
        options = self.options
        if self._turn is None:
            return self._idle_step(frame, probability >= options.threshold)
        speaking = probability >= options.release
        self._turn.append(frame)
        self._speech_frames += speaking
        self._silent_frames = 0 if speaking else self._silent_frames + 1
        too_long = len(self._turn) * FRAME_S >= options.max_turn_s
        if self._silent_frames * FRAME_S >= options.silence_s or too_long:
            return self._stop()
        if self._silent_frames == round(options.pause_s / FRAME_S) and 0 < options.pause_s < options.silence_s:
            return SpeechPaused((self.frames - self._silent_frames) * FRAME_S, np.concatenate(self._turn),
                                self._speech_frames * FRAME_S, self.turns)
        return None

    def _idle_step(self, frame: np.ndarray, speaking: bool) -> TurnEvent | None:
        options = self.options
        if not speaking:
            self._recent.extend(self._candidate)
            self._candidate = []
            self._recent.append(frame)
            del self._recent[: max(0, len(self._recent) - round(options.prefix_s / FRAME_S))]
            return None
        self._candidate.append(frame)
        if len(self._candidate) * FRAME_S < options.start_s:
            return None
        self._turn = [*self._recent, *self._candidate]
        self._started_at = self.frames - len(self._candidate)
        self._speech_frames, self._silent_frames = len(self._candidate), 0
        self._recent, self._candidate = [], []
        self.turns += 1
        return SpeechStarted(self._started_at * FRAME_S)

    def _stop(self) -> SpeechStopped:
        assert self._turn is not None
        audio = np.concatenate(self._turn)
        speech_s = self._speech_frames * FRAME_S
        # the end is where the speech stopped, not where the silence that proved it ended
        end_s = (self.frames - self._silent_frames) * FRAME_S
        self._turn, self._speech_frames, self._silent_frames = None, 0, 0
        return SpeechStopped(end_s, audio, speech_s, kept=speech_s >= self.options.min_speech_s, turn=self.turns)
