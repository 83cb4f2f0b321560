"""`POST /chat`: reply to a message with the chat model and stream the spoken reply as WAV; `GET /chat/{id}`: a
recent chat request's text, sentences and timings (docs/API.md). A program that wants the text, sentences and pieces
as they come reads `POST /v1/chat/events` instead (events.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from voicekit.serve.audio import FORMATS
from voicekit.serve.deps import FINISHED_KEPT, Authorized, RequestRecord, State
from voicekit.serve.schema import ApiError, ChatRequest
from voicekit.serve.streaming import start_chat, stream_reply

router = APIRouter()


@router.post("/chat")
async def chat(body: ChatRequest, request: Request, state: State, rid: Authorized) -> Response:
    return await stream_reply(state, RequestRecord(rid, "chat", start_chat(state, body)), FORMATS["wav"], request)


@router.get("/chat/{request_id}")
async def chat_result(request_id: str, state: State, rid: Authorized) -> dict[str, Any]:
    record = state.find(request_id)
    if record is None or record.route != "chat":
        raise ApiError(404, f"no recent chat request {request_id!r} (the last {FINISHED_KEPT} are kept)",
                       param="request_id", code="not_found")
    reply = record.reply
    return {"id": record.id, "done": reply.done, "outcome": record.outcome, "voice": record.voice,
            "text": reply.text, "sentences": reply.sentences, "pieces": reply.pieces, "history": reply.history,
            "timings": reply.timings.as_dict()}
