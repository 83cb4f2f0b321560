"""What a realtime session hears: microphone audio in, turn events out.

    listener = Listener(options)                 # per session
    events = listener.hear(pcm, rate)            # resampled to 16 kHz, echo taken out, VAD turns
    p = await listener.probability(paused)       # semantic end of turn: Smart Turn's verdict at a pause
    events = listener.decide(paused, p)          # the detector ends the turn when the verdict says so
    listener.play(reply_24k)                     # the reply audio being sent (the echo canceller's reference)

The order is the room's: the microphone's audio first loses the reply's echo (`EchoCanceller`), then the VAD and
the turn detector read what is left, so the assistant's own voice neither interrupts it nor becomes a user turn.
With semantic turn detection, each pause is judged by Smart Turn (in a worker thread: ~0.1 s of CPU), the session
may overrule it with the words heard (voicekit/listening/smart_turn.py), and the detector ends the turn when the
verdict says so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from voicekit.audio import StreamResampler
from voicekit.listening.asr import to_float_mono
from voicekit.listening.echo import EchoCanceller, EchoMode
from voicekit.listening.smart_turn import SmartTurn
from voicekit.listening.turns import SpeechPaused, TurnDetector, TurnEvent, TurnOptions
from voicekit.listening.vad import SAMPLE_RATE, SileroVAD

log = logging.getLogger("voicekit.realtime")


@dataclass
class Verdict:
    """The probability that turn `turn` was complete at its pause: Smart Turn's (`model`), unless the words heard so
    far said it cannot be (then `probability` is lower)."""

    turn: int
    probability: float
    model: float


class Listener:
    """One session's ears (see the module docstring). Not thread-safe: use it from the session's loop."""

    def __init__(self, turn: TurnOptions, input_rate: int, output_rate: int, echo: EchoMode = "auto") -> None:
        self.options = turn
        self.detector = TurnDetector(SileroVAD(), turn)
        self.echo = EchoCanceller(echo)
        self.smart_turn = SmartTurn() if turn.semantic else None
        self.last_verdict: Verdict | None = None
        self._input_rate = input_rate
        self._input = StreamResampler(input_rate, SAMPLE_RATE)
        self._reference = StreamResampler(output_rate, SAMPLE_RATE)
        self._output_rate = output_rate

    def retune(self, turn: TurnOptions) -> None:
        """New turn-taking options (session.update): they apply from the next turn; the stream goes on."""
        self.options = turn
        self.detector.options = turn
        if turn.semantic and self.smart_turn is None:
            self.smart_turn = SmartTurn()

    def set_echo(self, mode: EchoMode) -> None:
        """Another echo-cancellation mode (a fresh canceller: it re-learns the room in a fraction of a second)."""
        if mode != self.echo.mode:
            self.echo = EchoCanceller(mode)

    def hear(self, audio: bytes | np.ndarray, sample_rate: int) -> list[TurnEvent]:
        """Microphone audio (pcm16 bytes, or int16/float32 samples, mono at `sample_rate`) -> the turn events it
        completes."""
        if isinstance(audio, bytes | bytearray | memoryview):
            if len(audio) % 2:
                raise ValueError("pcm16 audio must have an even number of bytes")
            audio = np.frombuffer(audio, dtype="<i2")
        if sample_rate != self._input_rate:
            self._input, self._input_rate = StreamResampler(sample_rate, SAMPLE_RATE), sample_rate
        return self.detector.push(self.echo.process(self._input.push(to_float_mono(audio))))

    async def probability(self, paused: SpeechPaused) -> float:
        """Smart Turn's probability that the turn was over at `paused` (in a worker thread: ~0.1 s of CPU)."""
        assert self.smart_turn is not None, "semantic turn detection is off"
        return await asyncio.to_thread(self.smart_turn.probability, paused.audio)

    def decide(self, paused: SpeechPaused, probability: float, heard: float | None = None) -> list[TurnEvent]:
        """Hand the verdict on `paused` to the detector (it ends the turn when the policy says so). `heard` is the
        model's own probability when the words heard overruled it."""
        self.last_verdict = Verdict(paused.turn, probability, probability if heard is None else heard)
        log.debug("turn %d: complete with probability %.2f (the model: %.2f)", paused.turn, probability,
                  self.last_verdict.model)
        return self.detector.verdict(paused.turn, paused.speech_s, probability)

    def verdict_for(self, turn: int) -> Verdict | None:
        """The verdict on turn `turn`'s last pause, if one came."""
        verdict = self.last_verdict
        return verdict if verdict is not None and verdict.turn == turn else None

    def play(self, samples: np.ndarray, now: float | None = None) -> int:
        """Reply audio (at the output rate) is being sent: the canceller's reference. Returns where it lies on the
        microphone's clock (for `playback_started`)."""
        if self.echo.mode == "off":
            return 0
        return self.echo.play(self._reference.push(samples), now)

    def playback_lead_s(self) -> float | None:
        """Seconds of reply audio the client is modelled to hold before its loudspeaker runs dry; None when the
        echo canceller is off or the client sends no microphone audio (nothing to keep in step)."""
        return None if self.echo.mode == "off" else self.echo.timeline.lead_s()

    def playback_started(self, start: int, now: float | None = None) -> None:
        """The client says the audio that `play` laid at `start` became audible only now."""
        self.echo.started(start, now)

    def reply_stopped(self, client_dropped: bool = True) -> None:
        """The reply ended early; with `client_dropped` the client also dropped what it had buffered."""
        self._reference = StreamResampler(self._output_rate, SAMPLE_RATE)
        if client_dropped:
            self.echo.flush()

    def clear(self) -> None:
        """Forget the audio heard since the last turn (the clock and the echo canceller go on)."""
        self.detector.reset()
