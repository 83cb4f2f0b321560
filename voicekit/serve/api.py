"""The HTTP API: `POST /chat`, OpenAI-compatible `POST /v1/audio/speech` and `POST /v1/audio/transcriptions`
(transcriptions.py), `GET /v1/audio/voices`, `GET /health`, `GET /metrics` (metrics.py).

`create_app(kit)` returns a FastAPI app (no Gradio here; `voicekit.serve.app` mounts the page beside it), with the
typed event routes of events.py (`/v1/chat/events`, `/v1/audio/speech/events`). Audio streams as it is made: every
route calls `kit.achat` / `kit.asay` (input is checked at call time, so a bad request gets a 4xx JSON error before
any audio is promised) and streams through streaming.py, which closes the reply however the stream ends, so a
client that disconnects mid-stream aborts its engine requests. Errors use OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`. docs/API.md documents every route.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicekit.build import resources
from voicekit.errors import VoicekitError
from voicekit.pipeline import AudioChunk
from voicekit.serve.admission import Admission, Limits, machine_identity
from voicekit.serve.audio import FORMATS, AudioFormat, encode_stream
from voicekit.serve.auth import credentials_check
from voicekit.serve.events import events_router
from voicekit.serve.metrics import RouteMetrics, metrics_router
from voicekit.serve.realtime import add_realtime_route
from voicekit.serve.schema import (
    SPEECH_MODELS,
    ApiError,
    ChatRequest,
    SpeechRequest,
    VoiceId,
    check_speech_options,
    error_body,
    validation_error,
    voicekit_error,
)
from voicekit.serve.streaming import (
    FINISHED_KEPT,
    AudioStreamResponse,
    RequestRecord,
    ServerState,
    open_reply,
    reply_headers,
    start_chat,
    stream_body,
)
from voicekit.serve.transcriptions import add_transcription_routes

log = logging.getLogger("voicekit.server")

MAX_TEXT_HEADER = 4096


# -- the app ----------------------------------------------------------------------------------------


def create_app(kit: Any, *, api_key: str | None = None, password: str | None = None,
               title: str = "voicekit", limits: Limits | None = None) -> FastAPI:
    """The API app for a loaded kit; `api_key` / `password` (VOICEKIT_API_KEY / VOICEKIT_PASSWORD) require auth;
    `limits` bound the requests running, waiting and their duration (default: the preset's, admission.py)."""
    app = FastAPI(title=title, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    state = ServerState(kit, Admission(limits or Limits.for_preset(kit.settings.preset)))
    app.state.voicekit = state
    app.add_middleware(RouteMetrics, metrics=state.metrics)
    authorized = credentials_check(api_key, password)

    async def request_id(request: Request) -> str:
        rid = uuid.uuid4().hex[:12]
        request.state.request_id = rid
        return rid

    async def authorize(rid: str = Depends(request_id), ok: bool = Depends(authorized)) -> str:
        if not ok:
            raise ApiError(401, "missing or wrong credentials: send 'Authorization: Bearer <API key or password>' "
                                "or HTTP Basic auth",
                           code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="voicekit"'})
        return rid

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(request, validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return _error_response(request, ApiError(error.status_code, str(error.detail), code=code,
                                                 headers=dict(error.headers or {})))

    @app.get("/health")
    async def health() -> JSONResponse:
        # 503 with the reason once an engine is dead (vLLM core crashed, model server gone): load balancers
        # and supervisors see it without sending a request that would fail. The probe runs on the kit's loop.
        # `recognizer`, `vllm_engines` (share, KV-cache tokens) and `gpu` (memory in use): what is loaded where
        # `capacity`: what it can still take, for a load balancer (docs/ENGINES.md); `machine`: bench capacity's
        failure, warnings, loaded, machine = await anyio.to_thread.run_sync(
            lambda: (kit.health(), kit.warnings(), resources(kit), machine_identity()))
        engine = getattr(kit.chat_model, "engine", None)
        body = {"status": "error" if failure else "ok", **({"reason": failure} if failure else {}),
                "warnings": warnings, "preset": kit.description.get("preset", kit.settings.preset),
                "active_requests": len(state.active),
                "engine_requests": len(engine.active_requests()) if engine is not None else 0,
                "served": state.served, "admission": state.admission.as_dict(),
                "capacity": state.admission.remaining(len(state.sessions)), "machine": machine,
                "rss_mb": _rss_mb(), **loaded}
        if failure:
            log.warning("health check failed: %s", failure)
        if warnings != state.warnings:  # logged when they change, not at every probe
            state.warnings = warnings
            log.warning("health: %s", "; ".join(warnings) or "no warnings any more")
        return JSONResponse(body, status_code=503 if failure else 200)

    @app.get("/v1/audio/voices")
    async def voices(rid: str = Depends(authorize)) -> dict[str, Any]:
        return {"object": "list", "default": kit.default_voice, "sample_rate": kit.sample_rate,
                "tags": kit.tags, "data": [{**_voice_entry(voice), "object": "voice"} for voice in kit.voices]}

    @app.post("/chat")
    async def chat(body: ChatRequest, request: Request, rid: str = Depends(authorize)) -> Response:
        record = RequestRecord(rid, "chat", start_chat(state, body))
        return await _stream_reply(state, record, FORMATS["wav"], request)

    @app.get("/chat/{request_id}")
    async def chat_result(request_id: str, rid: str = Depends(authorize)) -> dict[str, Any]:
        record = state.find(request_id)
        if record is None or record.route != "chat":
            raise ApiError(404, f"no recent chat request {request_id!r} (the last {FINISHED_KEPT} are kept)",
                           param="request_id", code="not_found")
        reply = record.reply
        return {"id": record.id, "done": reply.done, "outcome": record.outcome, "voice": record.voice,
                "text": reply.text, "sentences": reply.sentences, "pieces": reply.pieces, "history": reply.history,
                "timings": reply.timings.as_dict()}

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request, rid: str = Depends(authorize)) -> Response:
        fmt = check_speech_options(body)
        voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
        try:
            reply = kit.asay(body.input, voice=voice, time_limit_s=state.admission.limits.timeout_s)
        except VoicekitError as error:
            raise voicekit_error(error, "input") from None
        record = RequestRecord(rid, "speech", reply)
        return await _stream_reply(state, record, fmt, request)

    @app.get("/v1/models")
    async def models(rid: str = Depends(authorize)) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "voicekit"}
                                           for name in SPEECH_MODELS]}

    # before the catch-all below, which would answer 404
    add_transcription_routes(app, kit, authorize, metrics=state.metrics)
    add_realtime_route(app, kit, state.admission, api_key=api_key, password=password, sessions=state.sessions,
                       metrics=state.metrics)
    app.include_router(metrics_router(state.metrics, authorize))
    app.include_router(events_router(state, authorize))  # NDJSON events of chats and speech (events.py)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def unknown_route(rest: str, rid: str = Depends(request_id)) -> None:
        raise ApiError(404, f"no such route: /v1/{rest}; see /api/docs", code="not_found")

    return app


def _rss_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc; None elsewhere)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def _voice_entry(voice: Any) -> dict[str, str]:
    as_dict = getattr(voice, "as_dict", None)
    return as_dict() if as_dict else {"id": str(voice)}


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    headers = dict(error.headers)
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["X-Request-Id"] = rid
    log.info("request %s %s %s -> %d %s", rid or "-", request.method, request.url.path, error.status,
             error.code or error.kind)
    return JSONResponse(error_body(error.message, error.kind, error.param, error.code), status_code=error.status,
                        headers=headers)


async def _stream_reply(state: ServerState, record: RequestRecord, fmt: AudioFormat,
                        request: Request) -> Response:
    """Wait for the first audio (so a failure before it is still a JSON error), then stream the rest as `fmt`.

    A client that goes away before the first audio aborts the reply at once, like one that leaves mid-stream.
    """
    gone, first = await open_reply(state, record, request)
    if gone:
        return Response(status_code=499)  # nobody is listening any more
    rate, headers = record.reply.sample_rate, reply_headers(state, record)  # the turn's (a switch changes the kit's)
    if fmt.name == "pcm":
        headers["X-Audio-Format"] = "s16le; channels=1"
    headers.update(_known_reply_headers(record))

    def encode(chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[bytes]:
        return encode_stream(_samples(chunks), fmt, rate)

    return AudioStreamResponse(stream_body(state, record, first, encode), media_type=fmt.media_type,
                               headers=headers)


def _known_reply_headers(record: RequestRecord) -> dict[str, str]:
    """Reply text and timings that are already final when the first audio is out (chat, sequential mode)."""
    timings = record.reply.timings
    headers = {} if timings.ttfa_s is None else {"X-Time-To-First-Audio": f"{timings.ttfa_s:.3f}"}
    if record.route == "chat" and timings.llm_s > 0:  # the chat model has finished writing
        text = quote(record.reply.text, safe=" ,.!?'")
        if len(text) <= MAX_TEXT_HEADER:
            headers["X-Reply-Text"] = text
        headers["X-LLM-Seconds"] = f"{timings.llm_s:.3f}"
    return headers


async def _samples(chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[np.ndarray]:
    async for chunk in chunks:
        yield chunk.samples
