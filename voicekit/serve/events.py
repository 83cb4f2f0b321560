"""Typed event streams of chats and speech: `POST /v1/chat/events` and `POST /v1/audio/speech/events`.

One JSON object per line (NDJSON, `application/x-ndjson`), so a remote reply reads exactly as a local one:
the text as it is written, the sentences, each piece the speech backend was given and its audio, the timings.

    {"type": "start", "id", "voice", "sample_rate", "ttfa_s"}
    {"type": "text", "delta"}                     the reply text grows by `delta` (say: the whole text at once)
    {"type": "sentences", "sentences"}            the sentences of the text (a chat's once it is written)
    {"type": "piece", "index", "text"}            the speech backend starts piece `index` (AudioChunk.piece)
    {"type": "audio", "piece_index", "audio"}     base64 PCM: signed 16-bit little-endian mono at `sample_rate`
    {"type": "done", "text", "sentences", "pieces", "history", "timings", "timed_out"}
    {"type": "error", "message", "code"}          the reply failed mid-stream (nothing follows)

The requests take a running slot, wait for their first audio and abort on disconnect exactly as `/chat` does
(streaming.py): errors before the first audio are JSON errors with their status (400, 429, 504, 500).
`voicekit.connect()` reads these streams (voicekit/client_stream.py); docs/API.md has curl examples.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from voicekit.audio import float_to_pcm16
from voicekit.errors import VoicekitError
from voicekit.pipeline import AudioChunk, Turn
from voicekit.serve.deps import Authorized, RequestRecord, ServerState, State
from voicekit.serve.schema import ChatRequest, voicekit_error
from voicekit.serve.streaming import AudioStreamResponse, Encoder, open_reply, reply_headers, start_chat, stream_body

log = logging.getLogger("voicekit.server")

MEDIA_TYPE = "application/x-ndjson"


class SayRequest(BaseModel):
    """Body of `POST /v1/audio/speech/events`: what `kit.say()` takes."""

    model_config = ConfigDict(extra="forbid")

    input: str
    voice: str | None = None


router = APIRouter()


@router.post("/v1/chat/events")
async def chat_events(body: ChatRequest, request: Request, state: State, rid: Authorized) -> Response:
    return await stream_events(state, RequestRecord(rid, "chat", start_chat(state, body)), request)


@router.post("/v1/audio/speech/events")
async def speech_events(body: SayRequest, request: Request, state: State, rid: Authorized) -> Response:
    try:
        reply = state.kit.asay(body.input, voice=body.voice, time_limit_s=state.admission.limits.timeout_s)
    except VoicekitError as error:
        raise voicekit_error(error, "input") from None
    return await stream_events(state, RequestRecord(rid, "speech", reply), request)


async def stream_events(state: ServerState, record: RequestRecord, request: Request) -> Response:
    """Admit the request, wait for its first audio, then stream its events."""
    gone, first = await open_reply(state, record, request)
    if gone:
        return Response(status_code=499)  # nobody is listening any more
    return AudioStreamResponse(stream_body(state, record, first, event_encoder(record, record.reply.sample_rate)),
                               media_type=MEDIA_TYPE, headers=reply_headers(state, record))


def event_encoder(record: RequestRecord, sample_rate: int) -> Encoder:
    """The NDJSON lines of a reply's chunks, `start` to `done` (or `error`)."""

    async def encode(chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[bytes]:
        turn: Turn = record.reply.turn
        told = _Told()
        yield line({"type": "start", "id": record.id, "voice": turn.voice, "sample_rate": sample_rate,
                    "ttfa_s": turn.timings.as_dict()["ttfa_s"]})
        try:
            async for chunk in chunks:
                for event in told.news(turn):
                    yield line(event)
                if chunk.piece_index != told.piece_index:
                    told.piece_index = chunk.piece_index
                    yield line({"type": "piece", "index": chunk.piece_index, "text": chunk.piece})
                audio = base64.b64encode(float_to_pcm16(chunk.samples)).decode("ascii")
                yield line({"type": "audio", "piece_index": chunk.piece_index, "audio": audio})
        except Exception as error:  # the headers are sent: the failure becomes the stream's last event
            record.outcome = "failed"
            log.error("request %s failed mid-stream", record.id, exc_info=error)
            yield line(error_event(error))
            return
        for event in told.news(turn):
            yield line(event)
        yield line({"type": "done", "text": turn.text, "sentences": turn.sentences, "pieces": turn.pieces,
                    "history": turn.history, "timings": turn.timings.as_dict(), "timed_out": turn.timed_out})

    return encode


def line(event: dict[str, Any]) -> bytes:
    """One event as an NDJSON line."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def error_event(error: Exception) -> dict[str, Any]:
    """The `error` event of a reply that failed mid-stream (a voicekit error says what; others say see the log)."""
    if isinstance(error, VoicekitError):
        return {"type": "error", "message": str(error), "code": "speech_failed"}
    return {"type": "error", "message": f"the server failed mid-reply ({type(error).__name__}); see its log",
            "code": "internal_error"}


class _Told:
    """What the client has been told of a turn, so each event carries only what changed (the turn is filled in on
    the kit's loop; the text and sentences are read between chunks)."""

    def __init__(self) -> None:
        self.text = ""
        self.sentences: list[str] = []
        self.piece_index = -1

    def news(self, turn: Turn) -> Iterator[dict[str, Any]]:
        text = turn.text
        # only growth is sent as it comes: the text is stripped once written (done has it whole)
        if text != self.text and text.startswith(self.text):
            yield {"type": "text", "delta": text[len(self.text):]}
            self.text = text
        sentences = list(turn.sentences)
        if sentences != self.sentences:
            self.sentences = sentences
            yield {"type": "sentences", "sentences": sentences}
