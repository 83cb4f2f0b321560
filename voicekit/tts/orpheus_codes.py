"""Orpheus TTS token layout: prompt ids, a streaming audio-token parser and SNAC code packing.

Orpheus 3B is a Llama that speaks by emitting audio token ids. Audio token number ``i`` (0-based,
counting only audio tokens) carries the SNAC code ``id - AUDIO_BASE - (i % 7) * CODEBOOK_SIZE``.
Seven audio tokens make one frame (2048 samples at 24 kHz); the slots map to SNAC codebooks as
``SLOT_LAYOUT`` says. Everything here is plain Python/numpy so it is usable (and testable) without torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from voicekit.text import EMOTION_TAGS as TEXT_EMOTION_TAGS

# --- id layout (Llama-3 vocabulary is 128256 ids; Orpheus custom token N is id 128256 + N) ---
BOS_ID = 128000  # <|begin_of_text|>, added by the tokenizer itself
EOT_ID = 128009  # <|eot_id|>
START_OF_SPEECH_ID = 128257
END_OF_SPEECH_ID = 128258  # the stop token; upstream's 49158 default is wrong for the 3B model
START_OF_HUMAN_ID = 128259
END_OF_HUMAN_ID = 128260
START_OF_AI_ID = 128261
END_OF_AI_ID = 128262
PAD_ID = 128263

AUDIO_BASE = 128266
CODEBOOK_SIZE = 4096
FRAME_TOKENS = 7
SAMPLES_PER_FRAME = 2048  # SNAC 24 kHz hop 512 x 4 (c0 stride)
SAMPLE_RATE = 24000
AUDIO_TOKENS_PER_SECOND = FRAME_TOKENS * SAMPLE_RATE / SAMPLES_PER_FRAME  # ~82.03

#: For each frame slot: (codebook, position offset inside the frame) in c0 / c1 / c2.
SLOT_LAYOUT: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))
#: Codes per frame for each codebook (SNAC vq_strides [4, 2, 1]).
CODES_PER_FRAME = (1, 2, 4)

VOICES: tuple[str, ...] = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
DEFAULT_VOICE = "tara"
#: The tags the fine-tune honours inline (defined once, in voicekit.text, which keeps them when cleaning).
EMOTION_TAGS = TEXT_EMOTION_TAGS

PROMPT_PREFIX: tuple[int, ...] = (START_OF_HUMAN_ID,)
PROMPT_SUFFIX: tuple[int, ...] = (EOT_ID, END_OF_HUMAN_ID, START_OF_AI_ID, START_OF_SPEECH_ID)

#: One frame: the seven codes in slot order (each 0..4095).
Frame = tuple[int, int, int, int, int, int, int]


def prompt_text(voice: str, text: str) -> str:
    """Return the text Orpheus is prompted with: ``"voice: text"``."""
    return f"{voice}: {text}"


def build_prompt_ids(tokenizer_ids_of_text: Sequence[int]) -> list[int]:
    """Wrap the tokenizer's ids of ``"V: T"`` (starting with BOS 128000) into the Orpheus prompt ids.

    A missing BOS is added, since the fine-tune was trained with it; pass the result to the engine as ids
    (decoding to a string and re-tokenizing would mangle the control tokens).
    """
    ids = [int(i) for i in tokenizer_ids_of_text]
    if not ids or ids[0] != BOS_ID:
        ids.insert(0, BOS_ID)
    return [*PROMPT_PREFIX, *ids, *PROMPT_SUFFIX]


def is_audio_id(token_id: int) -> bool:
    """True for ids in the audio range (they advance the 7-slot phase, valid or not)."""
    return token_id >= AUDIO_BASE


def code_of(token_id: int, slot: int) -> int:
    """SNAC code an audio id carries in frame slot ``slot`` (may be out of 0..4095 when invalid)."""
    return token_id - AUDIO_BASE - slot * CODEBOOK_SIZE


@dataclass
class ParseStats:
    """Counters a `CodeParser` keeps about one stream."""

    frames: int = 0  # complete valid frames returned
    audio_tokens: int = 0  # ids in the audio range, valid or not (they set the slot phase)
    rejected_ids: int = 0  # audio ids whose code for their slot is outside 0..4095
    dropped_frames: int = 0  # complete frames dropped because they held a rejected id
    ignored_ids: int = 0  # non-audio ids skipped (control tokens, text tokens, ids after the stop)
    partial_tokens: int = 0  # audio tokens of an unfinished frame dropped by `finish()`
    stopped: bool = False  # end-of-speech 128258 was seen


class CodeParser:
    """Turn a stream of Orpheus token ids into SNAC frames, seven audio tokens at a time.

    Feed every id of every engine delta (deltas may coalesce several tokens). Rules:

    * only audio ids (>= 128266) count for the slot phase; other ids (128257, 128009, text ids) are
      skipped without shifting it;
    * code 0 is valid; an audio id whose code for its slot is outside 0..4095 is rejected, still
      *occupies* its slot, and the frame holding it is dropped. Why: the model emits tokens in a fixed
      7-slot rhythm, so a bad id is a bad value at a real position. Skipping it as a stray would shift
      every later token by one slot and corrupt (or reject) the rest of the utterance; counting it loses
      only one 85 ms frame;
    * end-of-speech 128258 stops parsing; later ids are ignored;
    * `finish()` drops (and reports) a frame left incomplete when the stream is cut.
    """

    def __init__(self) -> None:
        self.stats = ParseStats()
        self._slot_codes: list[int] = []
        self._frame_ok = True

    @property
    def stopped(self) -> bool:
        """True once end-of-speech was seen."""
        return self.stats.stopped

    @property
    def pending_tokens(self) -> int:
        """Audio tokens of the frame being assembled."""
        return len(self._slot_codes)

    def feed(self, token_ids: Iterable[int]) -> list[Frame]:
        """Parse all ids of one engine delta; return the frames completed by them (maybe none)."""
        frames: list[Frame] = []
        for raw in token_ids:
            frame = self._feed_one(int(raw))
            if frame is not None:
                frames.append(frame)
        return frames

    def _feed_one(self, token_id: int) -> Frame | None:
        if self.stats.stopped:
            self.stats.ignored_ids += 1
            return None
        if token_id == END_OF_SPEECH_ID:
            self.stats.stopped = True
            return None
        if not is_audio_id(token_id):
            self.stats.ignored_ids += 1
            return None
        self.stats.audio_tokens += 1
        code = code_of(token_id, len(self._slot_codes))
        if not 0 <= code < CODEBOOK_SIZE:
            self.stats.rejected_ids += 1
            self._frame_ok = False
        self._slot_codes.append(code)
        if len(self._slot_codes) < FRAME_TOKENS:
            return None
        return self._close_frame()

    def _close_frame(self) -> Frame | None:
        codes, ok = self._slot_codes, self._frame_ok
        self._slot_codes, self._frame_ok = [], True
        if not ok:
            self.stats.dropped_frames += 1
            return None
        self.stats.frames += 1
        return tuple(codes)  # type: ignore[return-value]

    def finish(self) -> ParseStats:
        """End the stream: drop an unfinished frame (counted in `partial_tokens`) and return the stats."""
        self.stats.partial_tokens += len(self._slot_codes)
        self._slot_codes, self._frame_ok = [], True
        return self.stats


class LoopGuard:
    """Spots an Orpheus stream stuck in a loop: the same block of frames over and over, never end-of-speech.

    The stream is stuck when its last `min_frames` frames are one block of at most `max_period` frames
    repeated. Seven 4096-way codes make a frame, so speech (even a pause) never repeats whole frames exactly
    for long; a stuck model does until the token budget (up to ~43 s) runs out. The defaults allow 24 frames,
    about 2 s, before calling it a loop.
    """

    def __init__(self, min_frames: int = 24, max_period: int = 8) -> None:
        if not 1 <= max_period <= min_frames // 2:
            raise ValueError("need 1 <= max_period <= min_frames / 2 (a loop repeats at least twice)")
        self.min_frames, self.max_period = min_frames, max_period
        self._recent: list[Frame] = []
        self.period: int | None = None  # the loop's length in frames, once one is found

    @property
    def looping(self) -> bool:
        return self.period is not None

    def push(self, frames: Iterable[Frame]) -> bool:
        """Add a delta's frames; True once the stream is looping."""
        for frame in frames:
            if self.period is not None:
                break
            self._recent = [*self._recent[-(self.min_frames - 1):], tuple(frame)]  # type: ignore[list-item]
            if len(self._recent) == self.min_frames:
                self.period = self._repeating_period()
        return self.looping

    def _repeating_period(self) -> int | None:
        recent = self._recent
        for period in range(1, self.max_period + 1):
            if all(recent[i] == recent[i - period] for i in range(period, len(recent))):
                return period
        return None


def frames_to_codes(frames: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unpack frames into SNAC codes ``(c0, c1, c2)`` of lengths n, 2n and 4n (int64)."""
    arr = np.asarray(frames, dtype=np.int64).reshape(-1, FRAME_TOKENS)
    c0 = arr[:, 0].copy()
    c1 = arr[:, [1, 4]].reshape(-1)
    c2 = arr[:, [2, 3, 5, 6]].reshape(-1)
    return c0, c1, c2



def codes_to_frames(c0: Sequence[int], c1: Sequence[int], c2: Sequence[int]) -> np.ndarray:
    """Pack SNAC codes into an ``(n, 7)`` array of frames in slot order (inverse of `frames_to_codes`)."""
    a0, a1, a2 = (np.asarray(c, dtype=np.int64).reshape(-1) for c in (c0, c1, c2))
    n = a0.size
    if a1.size != 2 * n or a2.size != 4 * n:
        raise ValueError(f"code lengths must be n, 2n, 4n; got {a0.size}, {a1.size}, {a2.size}")
    for name, a in (("c0", a0), ("c1", a1), ("c2", a2)):
        if a.size and (a.min() < 0 or a.max() >= CODEBOOK_SIZE):
            raise ValueError(f"{name} has codes outside 0..{CODEBOOK_SIZE - 1}")
    a1, a2 = a1.reshape(n, 2), a2.reshape(n, 4)
    return np.stack([a0, a1[:, 0], a2[:, 0], a2[:, 1], a1[:, 1], a2[:, 2], a2[:, 3]], axis=1)


def codes_to_token_ids(c0: Sequence[int], c1: Sequence[int], c2: Sequence[int]) -> list[int]:
    """Orpheus audio token ids that carry the SNAC codes ``(c0, c1, c2)``, frame by frame."""
    frames = codes_to_frames(c0, c1, c2)
    offsets = AUDIO_BASE + CODEBOOK_SIZE * np.arange(FRAME_TOKENS, dtype=np.int64)
    return (frames + offsets).reshape(-1).tolist()


# --- generation budget ---
_TAG_RE = re.compile(r"<[a-z]+>")
MIN_MAX_TOKENS = 7 * 36  # ~3 s: short texts ("Hi!") still get room for breath and a tag
MAX_MAX_TOKENS = 7 * 500  # ~43 s: one prompt plus this fits a 4096-token max_model_len


def estimate_speech_seconds(text: str) -> float:
    """A generous (slow-speaker) estimate of how long ``text`` takes to say."""
    tags = len(_TAG_RE.findall(text))
    plain = _TAG_RE.sub(" ", text)
    words = len(plain.split())
    chars = len(plain.strip())
    # ~2 words/s and ~11 chars/s are slow speech (typical is ~2.6 words/s, ~15 chars/s); take the larger.
    # Each emotion tag (a laugh, a sigh) gets a second of its own.
    return max(words / 2.0, chars / 11.0) + 1.0 * tags


def max_tokens_for_text(text: str, *, floor: int = MIN_MAX_TOKENS, cap: int = MAX_MAX_TOKENS) -> int:
    """Generation budget (``max_tokens``) for speaking ``text``: estimate + margin, clamped, whole frames.

    A fixed budget (upstream's 1200) silently truncates long text at ~14 s; split long text into
    sentences so that no sentence hits ``cap``.
    """
    seconds = estimate_speech_seconds(text) * 1.25 + 1.0  # 25% + 1 s margin: the end-of-speech must fit
    tokens = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND / FRAME_TOKENS) * FRAME_TOKENS
    return max(floor, min(cap, tokens))
