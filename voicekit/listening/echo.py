"""Echo cancellation for one conversation: what the microphone hears of the reply is taken out before the VAD,
the turn detector and the recognizer hear it.

    echo = EchoCanceller()                    # one per session (WebRTC AEC3, from the livekit wheel)
    echo.play(reply_16k)                      # every piece of reply audio, when it is sent to the client
    heard = echo.process(mic_16k)             # every piece of microphone audio: what the listener should hear
    echo.flush()                              # the reply was cut (barge-in): the client dropped what it had

The canceller is WebRTC's AEC3 (`livekit.rtc.AudioProcessingModule`, Apache-2.0, prebuilt), at 16 kHz on 10 ms
frames. It needs the reply audio (the far-end reference) a little *before* its echo reaches the microphone (up to
0.5 s early is fine, late is useless), and finds the delay itself. The server knows when it sent a sample, not when
it was heard, so the reference is laid on the microphone's own sample clock (`ReferenceTimeline`): a reply plays in
real time from when it is sent, back to back, paused while nothing is buffered; a client that reports playback
(`output_audio_buffer.started`) moves a late start to when it really began.

AEC3 assumes there is an echo: with headphones (or a browser that cancels its own echo) it suppresses the user for
the first seconds of a reply. `EchoPathMonitor` therefore checks whether the microphone hears the reply at all (its
loudness follows the reply's, at some delay) and, when it does not, the listener gets the microphone as it came.
"""

from __future__ import annotations

import collections
import difflib
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

log = logging.getLogger("voicekit.echo")

SAMPLE_RATE = 16000
FRAME = SAMPLE_RATE // 100  # AEC3 takes exactly 10 ms; any other size aborts the process (a Rust panic)
EchoMode = Literal["auto", "on", "off"]
ECHO_MODES: tuple[str, ...] = ("auto", "on", "off")
ECHO_SHARE = 0.6  # a turn this much made of the reply's own recent words is its echo...
ECHO_MIN_WORDS = 3  # ...if it has this many words ("Yes." is always the user's)
SETTLE_S = 1.0  # a reply's first second on a loudspeaker: its echo arrives and the canceller converges
_PLAYING_DB = -50.0  # a reference frame this loud is the reply playing
_SILENT_DB = -100.0
_WORD = re.compile(r"[a-z0-9']+")


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(samples, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def _level_db(frames: np.ndarray) -> np.ndarray:
    """Loudness of each 10 ms row of int16 samples, in dB full scale."""
    power = np.mean((frames.astype(np.float32) / 32768.0) ** 2, axis=-1)
    return 10.0 * np.log10(power + 1e-10)


class ReferenceTimeline:
    """The reply audio laid on the microphone's sample clock: which reference sample plays while microphone sample
    `n` is captured. Bounded: at most `max_s` seconds are kept."""

    def __init__(self, idle_gap_s: float = 0.5, max_s: float = 120.0, slew_ms_per_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.received = 0  # microphone samples received
        self.consumed = 0  # microphone samples processed (the reference is read up to here)
        self._offset: float | None = None  # (microphone sample captured "now") - now * rate: the uplink's delay
        self._offset_at = 0.0
        self._slew = slew_ms_per_s / 1000.0 * SAMPLE_RATE
        self._segments: collections.deque[list[Any]] = collections.deque()  # [start sample, int16 samples]
        self.end = 0  # microphone sample after the last reference sample
        self.run_start = 0  # microphone sample at which the reply playing now (after a silence) began
        self._idle = int(idle_gap_s * SAMPLE_RATE)
        self._max = int(max_s * SAMPLE_RATE)

    def now_index(self, now: float | None = None) -> int:
        """The microphone sample being captured at `now` (wall clock), from the least-delayed arrivals so far."""
        if self._offset is None:
            return self.received
        now = self.clock() if now is None else now
        offset = self._offset - self._slew * max(0.0, now - self._offset_at)
        return max(int(now * SAMPLE_RATE + offset), self.consumed)

    def arrived(self, count: int, now: float | None = None) -> None:
        """`count` microphone samples arrived: track the uplink (the least delay wins; a lasting rise is followed
        slowly), so 20-40 ms chunks and bursts after a stall do not move the reference."""
        now = self.clock() if now is None else now
        self.received += count
        offset = self.received - now * SAMPLE_RATE
        if self._offset is not None:
            offset = max(offset, self._offset - self._slew * max(0.0, now - self._offset_at))
        self._offset, self._offset_at = offset, now

    def add(self, samples: np.ndarray, now: float | None = None) -> int:
        """Lay `samples` (int16) after the audio still playing, or at the sample captured now when nothing is
        (a new reply, or a pause while the voice caught up). Returns where they start."""
        if not len(samples):
            return self.end
        start = max(self.end, self.now_index(now))
        if self.end == 0 or start - self.end >= self._idle:
            self.run_start = start  # a reply after a silence: the canceller meets its echo afresh
        self._segments.append([start, samples])
        self.end = start + len(samples)
        while self._segments and self.end - self._segments[0][0] > self._max:
            first_start, first = self._segments[0]
            excess = self.end - self._max - first_start
            if excess >= len(first):
                self._segments.popleft()
            else:
                self._segments[0] = [first_start + excess, first[excess:]]
        return start

    def delay_from(self, start: int, now: float | None = None) -> None:
        """The client says the audio laid at `start` began playing only now: move it, and all after it, later."""
        shift = self.now_index(now) - start
        if shift <= 0:
            return  # early is what AEC3 needs; only a late start is corrected
        for segment in self._segments:
            if segment[0] >= start:
                segment[0] += shift
        self.end += shift
        if self.run_start >= start:
            self.run_start += shift

    def flush(self, keep_s: float = 0.3, now: float | None = None) -> None:
        """The client dropped its buffer: keep only what it may still have played before the stop reached it."""
        cut = max(self.now_index(now) + int(keep_s * SAMPLE_RATE), self.consumed)
        kept: collections.deque[list[Any]] = collections.deque()
        for start, samples in self._segments:
            if start >= cut:
                break
            kept.append([start, samples[: cut - start]])
        self._segments = kept
        self.end = min(self.end, cut)

    def fill(self, index: int, out: np.ndarray) -> bool:
        """The reference for microphone samples [index, index + FRAME) into `out`. False while nothing has played
        for longer than the idle gap: then AEC3 gets no reference at all (zeros would pin it to an old delay)."""
        while self._segments and self._segments[0][0] + len(self._segments[0][1]) <= index:
            self._segments.popleft()
        out[:] = 0
        hit = False
        for start, samples in self._segments:
            if start >= index + FRAME:
                break
            low, high = max(start, index), min(start + len(samples), index + FRAME)
            if high > low:
                out[low - index:high - index] = samples[low - start:high - start]
                hit = True
        return hit or (self.end > 0 and index - self.end < self._idle)

    @property
    def stored_s(self) -> float:
        """Reference audio held (bounded by `max_s`)."""
        return sum(len(samples) for _, samples in self._segments) / SAMPLE_RATE

    def lead_s(self, now: float | None = None) -> float | None:
        """Seconds of reply audio the client is modelled to hold before it runs dry (negative: dry already); None
        while no microphone audio has set the clock (a client that sends none plays no echo back)."""
        if self._offset is None or self.end == 0:
            return None
        return (self.end - self.now_index(now)) / SAMPLE_RATE

    @property
    def played_s(self) -> float:
        """How long the reply playing now has been reaching the microphone (0 before it starts)."""
        return max(0, min(self.consumed, self.end) - self.run_start) / SAMPLE_RATE

    @property
    def pending_s(self) -> float:
        """Reference audio not yet reached by the microphone (what the client is modelled to still play)."""
        return max(0, self.end - self.consumed) / SAMPLE_RATE


class EchoPathMonitor:
    """Does the microphone hear the reply? Its loudness follows the reply's, at a delay of 0-500 ms, when it does
    (a loudspeaker); with headphones, or a client that cancels its own echo, it does not.

    Every `step_s` it correlates the last `window_s` of microphone levels with the reference levels at each delay
    (over the frames where the reply plays, once there are `min_playing_s` of them). A strong match says "hears" at
    once; weak matches, or a microphone that stays silent while the reply plays, for `doubt_s` of playing say "does
    not hear". Until one of them (`hears` None) nothing is known.

    Once it hears the reply, someone speaking over it (what the canceller leaves is loud: `talking_db`) breaks the
    match too; that is double talk, not a microphone gone deaf, so it never takes "hears" back (it did: the answer
    to an interruption then played unguarded and cut itself on its own echo)."""

    def __init__(self, window_s: float = 1.0, step_s: float = 0.1, max_delay_s: float = 0.5,
                 min_playing_s: float = 0.4, hears_at: float = 0.8, deaf_below: float = 0.6, doubt_s: float = 1.0,
                 silent_db: float = -60.0, talking_db: float = -45.0) -> None:
        self.window, self.step, self.max_lag = int(window_s * 100), int(step_s * 100), int(max_delay_s * 100)
        self.min_playing, self.doubt = int(min_playing_s * 100), int(doubt_s * 100)
        self.hears_at, self.deaf_below, self.silent_db, self.talking_db = hears_at, deaf_below, silent_db, talking_db
        self.hears: bool | None = None
        self.score: float | None = None  # the last correlation measured
        self._mic: collections.deque[float] = collections.deque(maxlen=self.window + self.max_lag)
        self._ref: collections.deque[float] = collections.deque(maxlen=self.window + self.max_lag)
        self._near: collections.deque[float] = collections.deque(maxlen=self.window)  # the cleaned microphone
        self._since = 0
        self._deaf_frames = 0
        self._strong = 0  # strong matches in a row

    def add(self, mic_db: float, reference_db: float | None, near_db: float = _SILENT_DB) -> None:
        """One 10 ms frame: the microphone's level, the reference's (None while nothing plays) and what is left of
        the microphone after cancellation (`near_db`)."""
        self._mic.append(mic_db)
        self._near.append(near_db)
        self._ref.append(_SILENT_DB if reference_db is None else reference_db)
        self._since += 1
        if self._since >= self.step:
            self._since = 0
            self._judge()

    def _judge(self) -> None:
        mic, ref = np.array(self._mic), np.array(self._ref)
        best, most_playing = None, 0
        for lag in range(min(self.max_lag, len(mic) - self.min_playing) + 1):
            count = min(self.window, len(mic) - lag)  # early in a session the longer delays see less
            recent, shifted = mic[len(mic) - count:], ref[len(ref) - count - lag: len(ref) - lag]
            playing = shifted > _PLAYING_DB
            most_playing = max(most_playing, int(playing.sum()))
            if playing.sum() < self.min_playing or np.std(recent[playing]) < 1e-3 or np.std(shifted[playing]) < 1e-3:
                continue
            score = float(np.corrcoef(recent[playing], shifted[playing])[0, 1])
            best = score if best is None else max(best, score)
        if most_playing < self.min_playing:
            return  # too little of the reply in the window to say anything
        self.score = best
        silent = float(np.median(mic[-self.window:])) < self.silent_db
        if best is not None and best >= self.hears_at:
            # one strong match can be chance (two voices that happen to rise and fall together): ask for a few in a
            # row, more to take back a "does not hear" than to decide at first
            self._strong += 1
            if self.hears is not True and self._strong >= (3 if self.hears is False else 2):
                log.info("the microphone hears the reply (level correlation %.2f): echo cancellation on", best)
                self.hears = True
            if self.hears:
                self._deaf_frames = 0
            return
        self._strong = 0
        if self.hears and float(np.percentile(self._near, 90)) > self.talking_db:
            return  # someone speaks over the reply in this window (double talk): no evidence either way
        if silent or (best is not None and best < self.deaf_below):
            self._deaf_frames += self.step
            if self._deaf_frames >= self.doubt and self.hears is not False:
                log.info("the microphone does not hear the reply (%s): its audio passes as is",
                         "silent while it plays" if silent else f"level correlation {best:.2f}")
                self.hears = False


class EchoCanceller:
    """WebRTC AEC3 for one session, with its reference timeline and echo-path monitor (see the module docstring).

    `mode`: `auto` cleans the microphone only while it hears the reply, `on` always, `off` never (nothing runs)."""

    def __init__(self, mode: EchoMode = "auto", noise_suppression: bool = True,
                 clock: Callable[[], float] = time.monotonic, settle_s: float = SETTLE_S) -> None:
        if mode not in ECHO_MODES:
            raise ValueError(f"echo cancellation must be one of {', '.join(ECHO_MODES)}, not {mode!r}")
        self.mode = mode
        self.settle_s = settle_s
        self.timeline = ReferenceTimeline(clock=clock)
        self.monitor = EchoPathMonitor()
        self._pending = np.zeros(0, np.int16)
        self.frames = 0
        self._apm: Any = None
        if mode != "off":
            from livekit import rtc  # imported here: ~1 s, and its native threads start with the first module

            self._apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                                  high_pass_filter=True, auto_gain_control=False)
            self._mic_buffer, self._ref_buffer = bytearray(FRAME * 2), bytearray(FRAME * 2)
            self._mic_frame = rtc.AudioFrame(self._mic_buffer, SAMPLE_RATE, 1, FRAME)
            self._ref_frame = rtc.AudioFrame(self._ref_buffer, SAMPLE_RATE, 1, FRAME)
            self._mic_view = np.frombuffer(self._mic_buffer, np.int16)
            self._ref_view = np.frombuffer(self._ref_buffer, np.int16)

    @property
    def active(self) -> bool:
        """True when the listener gets the cleaned microphone: `on`, or `auto` once the microphone is known to hear
        the reply. Until then it gets the microphone as it came (AEC3 would suppress a headphone user)."""
        return self.mode == "on" or (self.mode == "auto" and self.monitor.hears is True)

    @property
    def may_hear_reply(self) -> bool:
        """False when the microphone is known not to hear the reply (`off`, or `auto` once the monitor found it deaf
        to it: headphones): a turn that repeats the reply's words is then the user's, never its echo."""
        return self.mode == "on" or (self.mode == "auto" and self.monitor.hears is not False)

    @property
    def settling(self) -> bool:
        """True while a reply the microphone may hear has played for less than `settle_s`: its echo reaches the
        microphone up to 0.5 s late, and AEC3 needs a few hundred milliseconds of it before what is left is quiet
        enough for the VAD. Speech starting then may be the echo's first syllables (the session holds it)."""
        return self._apm is not None and self.may_hear_reply and self.timeline.pending_s > 0 \
            and self.timeline.played_s < self.settle_s

    @property
    def undecided(self) -> bool:
        """True while `auto` does not yet know whether the microphone hears the reply that is playing."""
        return self.mode == "auto" and self.monitor.hears is None and self.timeline.pending_s > 0

    def play(self, samples: np.ndarray, now: float | None = None) -> int:
        """Reply audio (16 kHz float32) is being sent to the client; returns where it lies on the mic clock."""
        return self.timeline.add(_pcm16(samples), now) if self._apm is not None else 0

    def started(self, start: int, now: float | None = None) -> None:
        """The client says the audio laid at `start` (what `play` returned) became audible only now."""
        if self._apm is not None:
            self.timeline.delay_from(start, now)

    def flush(self, keep_s: float = 0.3, now: float | None = None) -> None:
        """The reply was cut and the client dropped what it had queued."""
        if self._apm is not None:
            self.timeline.flush(keep_s, now)

    def process(self, samples: np.ndarray, now: float | None = None) -> np.ndarray:
        """Microphone audio (16 kHz float32, any length) -> what the listener should hear, in whole 10 ms frames
        (a shorter rest waits for the next call). With the canceller off, the audio comes back as it is."""
        if self._apm is None:
            return np.asarray(samples, np.float32)
        self.timeline.arrived(len(samples), now)
        pcm = np.concatenate([self._pending, _pcm16(samples)])
        whole = len(pcm) // FRAME * FRAME
        frames, self._pending = pcm[:whole].reshape(-1, FRAME), pcm[whole:].copy()
        raw_db = _level_db(frames)
        cleaned = np.empty_like(frames)
        for row, frame in enumerate(frames):
            reference_db = None
            if self.timeline.fill(self.timeline.consumed, self._ref_view):
                self._apm.process_reverse_stream(self._ref_frame)
                reference_db = float(_level_db(self._ref_view))
            self._mic_view[:] = frame
            self._apm.process_stream(self._mic_frame)  # in place
            cleaned[row] = self._mic_view
            self.timeline.consumed += FRAME
            self.monitor.add(float(raw_db[row]), reference_db, float(_level_db(self._mic_view)))
            self.frames += 1
        chosen = cleaned if self.active else frames
        return chosen.reshape(-1).astype(np.float32) / 32768.0

    def describe(self) -> dict[str, Any]:
        """What the canceller is doing, for the session's description and the logs."""
        score = self.monitor.score
        return {"mode": self.mode, "active": self.active, "hears_reply": self.monitor.hears,
                "correlation": None if score is None else round(score, 3),
                "reference_pending_s": round(self.timeline.pending_s, 3)}


def _words(text: str) -> list[str]:
    # "lighthouse" heard for "lighthouses" said: a recognizer hearing an echo loses word endings first
    return [word[:-1] if len(word) > 3 and word.endswith("s") else word for word in _WORD.findall(text.lower())]


def echo_share(heard: str, spoken: Iterable[str]) -> float:
    """The share of the words `heard` that one of the replies `spoken` said too, in the same order (0 to 1)."""
    heard_words = _words(heard)
    if not heard_words:
        return 0.0
    matched = 0
    for text in spoken:
        matcher = difflib.SequenceMatcher(None, heard_words, _words(text), autojunk=False)
        matched = max(matched, sum(block.size for block in matcher.get_matching_blocks()))
    return matched / len(heard_words)


def word_count(text: str) -> int:
    """Words in `text` as the echo check counts them (a dashed word is several)."""
    return len(_words(text))


def is_echo(heard: str, spoken: Iterable[str], min_words: int = ECHO_MIN_WORDS) -> bool:
    """True when a turn is the assistant's own voice coming back: mostly the recent replies' words, in order, and
    at least `min_words` long (by default a one- or two-word answer is always taken for the user's)."""
    return word_count(heard) >= min_words and echo_share(heard, spoken) >= ECHO_SHARE
