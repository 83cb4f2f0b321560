"""What a realtime session is made of: its events, its options, and the bookkeeping of a reply being spoken
(what was sent, so the part the user heard can be told when it is cut)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voicekit.errors import InvalidHistoryError
from voicekit.listening.smart_turn import EndOfTurnPolicy
from voicekit.listening.turns import PAUSE_S, TurnOptions

INPUT_RATE = 24000  # OpenAI Realtime's pcm16: 24 kHz mono, both ways
OUTPUT_RATE = 24000
_event_ids = itertools.count(1)


@dataclass
class Event:
    """One event of a session: `type` as in the OpenAI Realtime API, its fields, and for audio deltas the samples
    (float32 mono at OUTPUT_RATE; the socket sends them as base64 pcm16)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    audio: np.ndarray | None = None
    event_id: str = field(default_factory=lambda: f"event_{next(_event_ids)}")

    def as_dict(self) -> dict[str, Any]:
        """The event's JSON fields (without the audio)."""
        return {"type": self.type, "event_id": self.event_id, **self.data}


@dataclass(frozen=True)
class TalkOptions:
    """How a session listens and answers (`kit.talk_options()` makes them from the settings). `turn.end_of_turn`
    set means semantic turn detection (`eagerness` names its policy); `echo` is the echo canceller's mode."""

    turn: TurnOptions = field(default_factory=TurnOptions)
    eagerness: str = "auto"
    echo: str = "auto"
    barge_in_grace_s: float = 0.3
    mode: str = "overlap"
    first_fragment_chars: int = 16
    language: str | None = "en"
    time_limit_s: float | None = 120.0


ROLES = ("user", "assistant")
MESSAGE = "{'role': 'user' or 'assistant', 'content': text}"


def restore_history(history: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """A past conversation, checked, for a new session to pick up: `session.history` of an earlier session (or its
    JSON), i.e. messages `{"role": "user" | "assistant", "content": text}` (`interrupted: True` kept for a cut reply;
    other keys, such as the old item ids, dropped). Each gets a new item id. A reply cut before a word of it was heard
    (`interrupted`, no text) holds nothing to restore and is skipped; anything else raises InvalidHistoryError (a
    ValueError) naming the message."""
    if history is None:
        return []
    if isinstance(history, str | bytes | Mapping) or not isinstance(history, Iterable):
        raise InvalidHistoryError(f"history is a list of messages: [{MESSAGE}, ...]")
    items = []
    for index, message in enumerate(history):
        if not isinstance(message, Mapping):
            raise InvalidHistoryError(f"history[{index}] is not a message: {MESSAGE}")
        role, content, cut = message.get("role"), message.get("content"), bool(message.get("interrupted"))
        if role not in ROLES:
            raise InvalidHistoryError(f"history[{index}]: the role is 'user' or 'assistant', not {role!r}")
        if not isinstance(content, str):
            raise InvalidHistoryError(f"history[{index}]: `content` is the message's text (a string), "
                                      f"not {type(content).__name__}")
        if not content.strip():
            if role == "assistant" and cut:
                continue
            raise InvalidHistoryError(f"history[{index}]: the {role} message has no text")
        items.append({"role": role, "content": content.strip(), "id": new_id("item"),
                      **({"interrupted": True} if cut and role == "assistant" else {})})
    return items


def with_turn_detection(options: TalkOptions, spec: dict[str, Any] | None) -> TalkOptions:
    """`options` with the turn detection a client (or the settings) asked for, in OpenAI's shapes:
    `{"type": "semantic_vad", "eagerness": "low"|"medium"|"high"|"auto"}`, `{"type": "server_vad", "threshold",
    "silence_duration_ms", "prefix_padding_ms"}`, or None / `{"type": "none"}` (the client commits each turn).
    Raises ValueError on anything else."""
    turn = replace(options.turn, end_of_turn=None)
    if turn.manual:  # leaving "none": the silences it switched off come back (a pause transcribes early again)
        turn = replace(turn, silence_s=TurnOptions.silence_s, pause_s=PAUSE_S)
    kind = "none" if spec is None else spec.get("type")
    if kind == "semantic_vad":
        eagerness = spec.get("eagerness") or "auto"  # type: ignore[union-attr]
        return replace(options, turn=replace(turn, end_of_turn=EndOfTurnPolicy.for_eagerness(eagerness)),
                       eagerness=eagerness)
    if kind == "none":  # no automatic end: the turn ends on input_audio_buffer.commit (or at max_turn_s)
        return replace(options, turn=replace(turn, silence_s=turn.max_turn_s, pause_s=0.0))
    if kind != "server_vad":
        raise ValueError(f"turn_detection.type must be semantic_vad, server_vad or none, not {kind!r}")
    assert spec is not None
    threshold, silence_ms, prefix_ms = (spec.get(key) for key in ("threshold", "silence_duration_ms",
                                                                   "prefix_padding_ms"))
    for name, value, low, high in (("threshold", threshold, 0.0, 1.0), ("silence_duration_ms", silence_ms, 1, 5000),
                                   ("prefix_padding_ms", prefix_ms, 0, 2000)):
        if value is not None and (not isinstance(value, int | float) or not low <= value <= high):
            raise ValueError(f"turn_detection.{name} must be a number from {low:g} to {high:g}, not {value!r}")
    silence_s = silence_ms / 1000 if silence_ms is not None else turn.silence_s
    return replace(options, turn=replace(turn, threshold=threshold if threshold is not None else turn.threshold,
                                         silence_s=silence_s, pause_s=min(turn.pause_s or PAUSE_S, silence_s / 2),
                                         prefix_s=prefix_ms / 1000 if prefix_ms is not None else turn.prefix_s))


def new_id(prefix: str) -> str:
    """An id for a session, an item or a response (`item_...`)."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@dataclass
class SpokenReply:
    """A reply in progress: what was sent, so the part the user heard can be told when it is cut."""

    id: str
    item_id: str
    message: str
    task: asyncio.Task[None] | None = None
    reply: Any = None
    turn_ended_at: float | None = None  # wall time the user's turn was detected as over (None: typed)
    first_audio_at: float | None = None
    heard_from: float | None = None  # wall time the client said its first sample became audible (None: not said)
    reference_start: int | None = None  # where its first sample lies on the echo canceller's microphone clock
    sent_s: float = 0.0  # seconds of audio sent
    piece_ends: list[tuple[str, float]] = field(default_factory=list)  # (spoken piece, audio second it ends at)
    status: str = "in_progress"
    reason: str | None = None

    def played_s(self, now: float) -> float:
        """What the client played by `now`: in real time from when it said playback began, else (its word never
        came) from the first delta."""
        began = self.heard_from if self.heard_from is not None else self.first_audio_at
        return 0.0 if began is None else max(0.0, min(self.sent_s, now - began))

    def heard_text(self, played_s: float) -> str:
        """The reply up to `played_s` of its audio: whole pieces, then the share of the next one's words."""
        heard: list[str] = []
        start = 0.0
        for piece, end in self.piece_ends:
            if end <= played_s:
                heard.append(piece)
            elif played_s > start:
                words = piece.split()
                heard.append(" ".join(words[: int(len(words) * (played_s - start) / max(end - start, 1e-6))]))
                break
            start = end
        return " ".join(part for part in heard if part)


def turn_detection(options: TalkOptions) -> dict[str, Any]:
    """The session's turn detection as `session.created` shows it, in the OpenAI Realtime shapes."""
    turn = options.turn
    if turn.end_of_turn is not None:
        return {"type": "semantic_vad", "eagerness": options.eagerness, "threshold": turn.threshold,
                "prefix_padding_ms": round(turn.prefix_s * 1000)}
    if turn.manual:
        return {"type": "none"}
    return {"type": "server_vad", "threshold": turn.threshold, "silence_duration_ms": round(turn.silence_s * 1000),
            "prefix_padding_ms": round(turn.prefix_s * 1000)}
