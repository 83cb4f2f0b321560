"""A simulated room for `bench talk --room` and the tests: a loudspeaker plays the reply, and the microphone hears
it back (later, quieter, with a short reverberation tail) over the user's voice and a faint noise.

    room = Room(gain=0.5, delay_s=0.12)
    speaker = Loudspeaker(room)              # the client's side, on the microphone's sample clock
    speaker.receive(reply_delta)             # reply audio as it arrives: played in real time after a jitter buffer
    mic = speaker.microphone(user_chunk)     # what the microphone captures next: user + echo + noise
    speaker.flush()                          # the client drops its buffer (barge-in)

Everything is at one sample rate (the socket's 24 kHz by default); the clock is the microphone's own, so the
simulation holds however fast the chunks are produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RATE = 24000


@dataclass(frozen=True)
class Room:
    """How the reply comes back: `gain` of it (1.0: as loud as sent), `delay_s` from playback to the microphone
    (device buffers and the air), a reverberation tail of RT60 `reverb_s`, and noise at `noise_db` dBFS."""

    gain: float = 0.5
    delay_s: float = 0.12
    reverb_s: float = 0.15
    noise_db: float = -50.0
    rate: int = RATE
    seed: int = 0

    def impulse_response(self) -> np.ndarray:
        """The direct path, then an exponentially decaying noise tail 6 dB below it."""
        length = max(1, int(self.reverb_s * 1.2 * self.rate))
        times = np.arange(length) / self.rate
        tail = np.random.default_rng(self.seed).standard_normal(length) * np.exp(-6.908 * times / max(self.reverb_s,
                                                                                                        1e-3))
        tail[: int(0.002 * self.rate)] = 0.0  # the first reflections come ~2 ms after the direct sound
        tail *= 10 ** (-6 / 20) / max(float(np.sqrt(np.sum(tail**2))), 1e-9)
        tail[0] += 1.0
        return tail.astype(np.float32)

    def label(self) -> str:
        """A short name for reports: 'gain 0.5, delay 120 ms'."""
        return f"gain {self.gain:g}, delay {round(self.delay_s * 1000)} ms"


@dataclass
class Loudspeaker:
    """The client's loudspeaker and microphone in `room`: received audio plays `buffer_s` after it arrives (or right
    after what is still playing), and each `microphone()` call captures the next stretch of the room."""

    room: Room = field(default_factory=Room)
    buffer_s: float = 0.08
    now: int = 0  # microphone samples captured so far
    played_samples: int = 0  # reply samples played so far (all replies)

    def __post_init__(self) -> None:
        self._response = self.room.impulse_response()
        self._delay = int(self.room.delay_s * self.room.rate)
        self._rng = np.random.default_rng(self.room.seed + 1)
        self._queue = np.zeros(0, np.float32)  # received, not yet played
        self._starts_at = 0  # microphone sample at which the queue's first sample plays
        self._history = np.zeros(self._delay + len(self._response), np.float32)  # what the speaker emitted lately

    @property
    def playing(self) -> bool:
        """True while received audio is waiting or playing."""
        return len(self._queue) > 0

    def receive(self, samples: np.ndarray) -> None:
        """Reply audio arrived: it plays after the jitter buffer, or right after what is queued."""
        if not len(self._queue):
            self._starts_at = self.now + int(self.buffer_s * self.room.rate)
        self._queue = np.concatenate([self._queue, np.asarray(samples, np.float32)])

    def flush(self) -> None:
        """The client dropped what it had not played (the server said the user spoke)."""
        self._queue = np.zeros(0, np.float32)

    def microphone(self, user: np.ndarray) -> np.ndarray:
        """Capture the next `len(user)` samples: the user's voice plus the room's echo and noise."""
        count = len(user)
        emitted = np.zeros(count, np.float32)
        begin = max(0, self._starts_at - self.now)  # the queue may start playing inside this stretch
        if len(self._queue) and begin < count:
            take = min(count - begin, len(self._queue))
            emitted[begin:begin + take] = self._queue[:take]
            self._queue = self._queue[take:]
            self._starts_at = self.now + begin + take
            self.played_samples += take
        self._history = np.concatenate([self._history, emitted])
        # the echo reaching the microphone now left the speaker `delay` samples ago, smeared by the room
        span = self._history[len(self._history) - count - self._delay - len(self._response) + 1:
                             len(self._history) - self._delay]
        echo = np.convolve(span, self._response, mode="valid")[:count] * self.room.gain
        self._history = self._history[-(self._delay + len(self._response) + count):]
        noise = self._rng.standard_normal(count).astype(np.float32) * 10 ** (self.room.noise_db / 20)
        self.now += count
        return np.clip(np.asarray(user, np.float32) + echo + noise, -1.0, 1.0).astype(np.float32)
