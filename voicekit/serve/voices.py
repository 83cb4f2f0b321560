"""`GET /v1/audio/voices`: the kit's voices (id, family, language, description), default voice, rate and tags."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from voicekit.serve.deps import Authorized, State

router = APIRouter()


@router.get("/v1/audio/voices")
async def voices(state: State, rid: Authorized) -> dict[str, Any]:
    kit = state.kit
    return {"object": "list", "default": kit.default_voice, "sample_rate": kit.sample_rate,
            "tags": kit.tags, "data": [{**voice.as_dict(), "object": "voice"} for voice in kit.voices]}
