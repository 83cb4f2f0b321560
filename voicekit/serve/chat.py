"""`POST /chat`: reply to a message with the chat model and stream the spoken reply as WAV; `GET /chat/{id}`: a
recent chat request's text, sentences and timings (docs/API.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from voicekit.errors import VoicekitError
from voicekit.serve.audio import FORMATS
from voicekit.serve.deps import FINISHED_KEPT, Authorized, RequestRecord, State
from voicekit.serve.schema import ApiError, ChatRequest, voicekit_error
from voicekit.serve.streaming import stream_reply

router = APIRouter()


@router.post("/chat")
async def chat(body: ChatRequest, request: Request, state: State, rid: Authorized) -> Response:
    options = {key: value for key, value in (("system_prompt", body.system_prompt),
                                             ("temperature", body.temperature), ("seed", body.seed),
                                             ("max_tokens", body.max_tokens))
               if value is not None}
    try:
        reply = state.kit.achat(body.message, voice=body.voice, history=body.history, mode=body.mode,
                                time_limit_s=state.admission.limits.timeout_s, **options)
    except VoicekitError as error:
        raise voicekit_error(error, "message") from None
    return await stream_reply(state, RequestRecord(rid, "chat", reply), FORMATS["wav"], request)


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
