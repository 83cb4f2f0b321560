"""What a realtime session is made of: its events, its options, and the bookkeeping of a reply being spoken
(what was sent, so the part the user heard can be told when it is cut)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicekit.listening.turns import TurnOptions

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
    """How a session listens and answers (`kit.talk_options()` makes them from the settings)."""

    turn: TurnOptions = field(default_factory=TurnOptions)
    barge_in_grace_s: float = 0.3
    mode: str = "overlap"
    first_fragment_chars: int = 24
    language: str | None = "en"
    time_limit_s: float | None = 120.0


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
    sent_s: float = 0.0  # seconds of audio sent
    piece_ends: list[tuple[str, float]] = field(default_factory=list)  # (spoken piece, audio second it ends at)
    status: str = "in_progress"
    reason: str | None = None

    def played_s(self, now: float) -> float:
        """The server's estimate of what the client played: audio plays in real time from its first delta."""
        return 0.0 if self.first_audio_at is None else min(self.sent_s, now - self.first_audio_at)

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
