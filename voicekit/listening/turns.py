"""Turn-taking: when the user starts speaking, and when their turn is over.

`TurnDetector` reads Silero VAD scores of a live 16 kHz stream. Speech starts after `start_s` of speech frames
(a click or a breath is not speech; barge-in waits for this). A turn shorter than `min_speech_s` of speech is
dropped (a cough), one longer than `max_turn_s` is cut there. After `pause_s` of silence (0.1 s) the detector says
the user paused (`SpeechPaused`, with the turn so far), so a listener may start transcribing before the turn is over;
when the turn then ends with no speech since, that work stands.

When does the turn end?
- server VAD (`end_of_turn` None): after `silence_s` without speech.
- semantic (`end_of_turn` an `EndOfTurnPolicy`): after the policy's `ask_s` of silence (0.2 s) the detector says so
  again (`SpeechPaused.ask`); the listener asks an end-of-turn model then and hands its verdict to `verdict()`; the
  turn ends after the silence the policy gives that verdict (at once for a finished sentence, later for "I would
  like to order..."), and after the policy's longest wait when no verdict came.
Times are seconds of audio since the stream began (not wall time: a client may send faster than real time), so a
verdict that arrives after more silence was fed ends the turn as if it had come in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicekit.listening.smart_turn import EndOfTurnPolicy
from voicekit.listening.vad import FRAME, FRAME_S, SileroVAD

PAUSE_S = 0.1  # silence after which transcribing starts: the words are ready about when a finished turn ends


@dataclass(frozen=True)
class TurnOptions:
    """How the detector decides; the defaults suit a person talking to an assistant."""

    threshold: float = 0.5  # a frame is speech at this probability...
    release: float = 0.35  # ...and stays speech, once speaking, down to this one (hysteresis)
    start_s: float = 0.1  # speech this long starts a turn (and may interrupt a reply)
    silence_s: float = 0.5  # silence this long ends it (server VAD)
    pause_s: float = PAUSE_S  # silence this long is a pause: transcribing may start (0 or >= silence_s: never)
    end_of_turn: EndOfTurnPolicy | None = None  # semantic: a model's verdict, asked at its ask_s of silence, decides
    min_speech_s: float = 0.25  # a turn with less speech than this is dropped
    prefix_s: float = 0.3  # audio kept from before the start, so the recognizer hears the first syllable
    max_turn_s: float = 30.0  # a turn is cut here (a TV in the background must not grow a buffer forever)

    @property
    def manual(self) -> bool:
        """True when the client ends each turn (turn detection "none"): only `max_turn_s` ends one here."""
        return self.end_of_turn is None and self.silence_s >= self.max_turn_s

    @property
    def semantic(self) -> bool:
        """True when an end-of-turn model decides which pauses end the turn."""
        return self.end_of_turn is not None

    @property
    def pause_frames(self) -> tuple[int | None, int | None]:
        """Frames of silence after which the detector reports a pause to transcribe at, and one to ask the
        end-of-turn model at (None: no such pause; both may be the same frame)."""
        longest = self.longest_silence_s
        transcribe = round(self.pause_s / FRAME_S) if 0 < self.pause_s < longest else None
        ask = round(self.end_of_turn.ask_s / FRAME_S) if self.end_of_turn is not None else None
        return transcribe or None, ask if ask is not None and 0 < ask * FRAME_S < longest else None

    @property
    def longest_silence_s(self) -> float:
        """Silence that ends a turn whatever else happens (semantic: the policy's longest wait)."""
        return self.end_of_turn.max_wait_s if self.end_of_turn is not None else self.silence_s


@dataclass(frozen=True)
class SpeechStarted:
    """The user started speaking at `at_s` (audio seconds)."""

    at_s: float


@dataclass(frozen=True)
class SpeechPaused:
    """The user has been silent for a moment in turn number `turn` (since `at_s`): `audio` is the turn so far (16 kHz),
    `speech_s` its speech. If the turn ends with the same `speech_s`, nothing was said since. `ask`: this is the
    silence at which the end-of-turn model is asked (semantic detection); else it is `pause_s`, to transcribe at. One
    pause may be reported twice (first to transcribe, then to ask), with the same `speech_s`."""

    at_s: float
    audio: np.ndarray
    speech_s: float
    turn: int
    ask: bool = False


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
        self._end_silence_s = self.options.longest_silence_s  # the silence that ends this pause's turn

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

    def verdict(self, turn: int, speech_s: float, probability: float) -> list[TurnEvent]:
        """The end-of-turn model's `probability` that the turn was complete at the pause `SpeechPaused(turn,
        speech_s)` reported: ends the turn now if the policy says the silence so far is enough, else sets how much
        silence will. A stale verdict (the user spoke again since that pause) changes nothing."""
        policy = self.options.end_of_turn
        if policy is None or self._turn is None or turn != self.turns or self._silent_frames == 0:
            return []
        if speech_s != self._speech_frames * FRAME_S:
            return []
        self._end_silence_s = policy.silence_to_end(probability)
        if probability >= policy.threshold or self._silent_frames * FRAME_S >= self._end_silence_s:
            return [self._stop()]
        return []

    def reset(self) -> None:
        """Drop whatever was heard (the client cleared its input buffer); the clock keeps running."""
        self.vad.reset()
        self._turn, self._candidate, self._recent = None, [], []
        self._speech_frames = self._silent_frames = 0
        self._pending = np.zeros(0, dtype=np.float32)
        self._end_silence_s = self.options.longest_silence_s

    def _step(self, frame: np.ndarray, probability: float) -> TurnEvent | None:
        self.frames += 1
        options = self.options
        if self._turn is None:
            return self._idle_step(frame, probability >= options.threshold)
        speaking = probability >= options.release
        self._turn.append(frame)
        self._speech_frames += speaking
        self._silent_frames = 0 if speaking else self._silent_frames + 1
        if speaking:
            self._end_silence_s = options.longest_silence_s  # a new pause waits for its own verdict
        too_long = len(self._turn) * FRAME_S >= options.max_turn_s
        if self._silent_frames * FRAME_S >= self._end_silence_s or too_long:
            return self._stop()
        transcribe_at, ask_at = options.pause_frames
        if self._silent_frames in (transcribe_at, ask_at):
            return SpeechPaused((self.frames - self._silent_frames) * FRAME_S, np.concatenate(self._turn),
                                self._speech_frames * FRAME_S, self.turns, ask=self._silent_frames == ask_at)
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
        self._end_silence_s = self.options.longest_silence_s
        return SpeechStopped(end_s, audio, speech_s, kept=speech_s >= self.options.min_speech_s, turn=self.turns)
