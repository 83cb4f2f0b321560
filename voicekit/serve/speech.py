"""`POST /v1/audio/speech` (OpenAI-compatible: the audio streams as it is made) and `GET /v1/models`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from voicekit.errors import VoicekitError
from voicekit.serve.deps import Authorized, RequestRecord, State
from voicekit.serve.schema import SPEECH_MODELS, SpeechRequest, VoiceId, check_speech_options, voicekit_error
from voicekit.serve.streaming import stream_reply

router = APIRouter()


@router.post("/v1/audio/speech")
async def speech(body: SpeechRequest, request: Request, state: State, rid: Authorized) -> Response:
    fmt = check_speech_options(body)
    voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    try:
        reply = state.kit.asay(body.input, voice=voice, time_limit_s=state.admission.limits.timeout_s)
    except VoicekitError as error:
        raise voicekit_error(error, "input") from None
    return await stream_reply(state, RequestRecord(rid, "speech", reply), fmt, request)


@router.get("/v1/models")
async def models(rid: Authorized) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "voicekit"}
                                       for name in SPEECH_MODELS]}
