"""The HTTP API: `POST /chat`, OpenAI-compatible `POST /v1/audio/speech` and `POST /v1/audio/transcriptions`
(transcriptions.py), `GET /v1/audio/voices`, `GET /health`.

`create_app(kit)` returns a FastAPI app (no Gradio here; `voicekit.serve.app` mounts the page beside it). Audio streams
as it is made: every route calls `kit.achat` / `kit.asay` (input is checked at call time, so a bad request
gets a 4xx JSON error before any audio is promised) and closes the reply in `finally`, so a client that
disconnects mid-stream aborts its engine requests. Errors use OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`. docs/API.md documents every route.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from voicekit.build import resources
from voicekit.errors import VoicekitError
from voicekit.serve.admission import Admission, Busy, Limits
from voicekit.serve.audio import FORMATS, AudioFormat, encode_stream
from voicekit.serve.auth import credentials_check
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
from voicekit.serve.transcriptions import add_transcription_routes

log = logging.getLogger("voicekit.server")

FINISHED_KEPT = 64
MAX_TEXT_HEADER = 4096


# -- per-request bookkeeping ------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One streaming request: its reply (the turn: voice, text, timings) and the server's own bookkeeping."""

    id: str
    route: str
    reply: Any
    started: float = field(default_factory=time.perf_counter)
    bytes_sent: int = 0
    outcome: str = "streaming"
    admitted: bool = False  # holds a running slot of the server's Admission until it finishes

    @property
    def voice(self) -> str:
        return str(self.reply.voice)


class ServerState:
    """Requests in flight and totals, shared by the routes (on `app.state.voicekit`)."""

    def __init__(self, kit: Any, admission: Admission) -> None:
        self.kit = kit
        self.admission = admission
        self.active: dict[str, RequestRecord] = {}
        self.finished: OrderedDict[str, RequestRecord] = OrderedDict()  # the last FINISHED_KEPT, for GET /chat/{id}
        self.served = 0
        self.warnings: list[str] = []  # the last health check's, to log only what changed

    def finish(self, record: RequestRecord) -> None:
        """Move a request from the active ones to the recently finished ones; free its running slot."""
        if record.admitted:
            record.admitted = False
            self.admission.leave(time.perf_counter() - record.started)
        self.active.pop(record.id, None)
        if record.reply is not None:
            record.reply.chunks.clear()  # streamed already; the kept record needs its text and timings, not audio
        self.finished[record.id] = record
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)
        self.served += 1
        _log_finished(record)

    def find(self, request_id: str) -> RequestRecord | None:
        """An active or recently finished request."""
        return self.active.get(request_id) or self.finished.get(request_id)


class AudioStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client went away."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


# -- the app ----------------------------------------------------------------------------------------


def create_app(kit: Any, *, api_key: str | None = None, password: str | None = None,
               title: str = "voicekit", limits: Limits | None = None) -> FastAPI:
    """The API app for a loaded kit; `api_key` / `password` (VOICEKIT_API_KEY / VOICEKIT_PASSWORD) require auth;
    `limits` bound the requests running, waiting and their duration (default: the preset's, admission.py)."""
    app = FastAPI(title=title, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    state = ServerState(kit, Admission(limits or Limits.for_preset(kit.settings.preset)))
    app.state.voicekit = state
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
        failure, warnings, loaded = await anyio.to_thread.run_sync(
            lambda: (kit.health(), kit.warnings(), resources(kit)))
        engine = getattr(kit.chat_model, "engine", None)
        body = {"status": "error" if failure else "ok", **({"reason": failure} if failure else {}),
                "warnings": warnings,
                "preset": kit.description.get("preset", kit.settings.preset),
                "active_requests": len(state.active),
                "engine_requests": len(engine.active_requests()) if engine is not None else 0,
                "served": state.served, "admission": state.admission.as_dict(), "rss_mb": _rss_mb(), **loaded}
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
        options = {key: value for key, value in (("system_prompt", body.system_prompt),
                                                 ("temperature", body.temperature), ("seed", body.seed),
                                                 ("max_tokens", body.max_tokens))
                   if value is not None}
        try:
            reply = kit.achat(body.message, voice=body.voice, history=body.history, mode=body.mode,
                              time_limit_s=state.admission.limits.timeout_s, **options)
        except VoicekitError as error:
            raise voicekit_error(error, "message") from None
        record = RequestRecord(rid, "chat", reply)
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

    add_transcription_routes(app, kit, authorize)  # before the catch-all below, which would answer 404
    add_realtime_route(app, kit, state.admission, api_key=api_key, password=password)

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
    """Wait for the first audio (so a failure before it is still a JSON error), then stream the rest.

    A client that goes away before the first audio aborts the reply at once, like one that leaves mid-stream.
    """
    reply = record.reply
    try:
        await state.admission.enter()
    except Busy as busy:
        await reply.aclose()
        log.info("request %s %s turned away: %s", record.id, record.route, busy)
        raise ApiError(429, str(busy), kind="rate_limit_error", code="server_busy",
                       headers={"Retry-After": str(busy.retry_after)}) from None
    record.admitted = True
    record.started = time.perf_counter()  # the time limit counts from here, not from the wait in line
    state.active[record.id] = record
    log.info("request %s %s started: voice=%s format=%s", record.id, record.route, record.voice, fmt.name)
    first_task = asyncio.ensure_future(_next_chunk(reply))
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    gone, first, error = True, None, None
    try:
        await asyncio.wait({first_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        gone = not first_task.done()
        if not gone:
            try:
                first = first_task.result()
            except BaseException as exc:  # reported below, after cleaning up
                error = exc
            if first is None and reply.turn.timed_out:  # the turn's time limit passed before any audio
                error = TimeoutError()
    finally:
        watcher.cancel()
        if gone:
            first_task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(first_task, watcher, return_exceptions=True)
            if gone or error is not None:
                await reply.aclose()
        if gone or error is not None:
            record.outcome = "disconnected" if gone else "timeout" if isinstance(error, TimeoutError) else "failed"
            state.finish(record)
    if gone:
        return Response(status_code=499)  # nobody is listening any more
    if error is not None:
        if isinstance(error, TimeoutError):
            raise ApiError(504, f"no audio within the request time limit ({state.admission.limits.timeout_s:g} s)",
                           kind="server_error", code="timeout")
        if not isinstance(error, Exception):
            raise error
        if isinstance(error, VoicekitError):
            raise ApiError(500, str(error), kind="server_error", code="speech_failed")
        log.error("request %s failed before its first audio", record.id, exc_info=error)
        raise ApiError(500, f"the server failed to make audio ({type(error).__name__}); see its log",
                       kind="server_error", code="internal_error")
    headers = {"X-Request-Id": record.id, "X-Sample-Rate": str(record.reply.sample_rate), "X-Voice": record.voice,
               "Cache-Control": "no-store"}
    if fmt.name == "pcm":
        headers["X-Audio-Format"] = "s16le; channels=1"
    headers.update(_known_reply_headers(record))
    return AudioStreamResponse(_body(state, record, fmt, first), media_type=fmt.media_type,
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


async def _next_chunk(chunks: AsyncIterator[Any]) -> Any:
    return await anext(chunks, None)


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is already read, so only a disconnect arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(state: ServerState, record: RequestRecord, fmt: AudioFormat, first: Any) -> AsyncIterator[bytes]:
    reply = record.reply

    async def samples() -> AsyncIterator[np.ndarray]:
        if first is not None:
            yield first.samples
        async for chunk in reply:  # the turn ends by itself at the time limit (Pipeline.run)
            yield chunk.samples
        if reply.turn.timed_out:
            record.outcome = "timeout"
            log.warning("request %s ran past its time limit (%g s): stopped", record.id,
                        state.admission.limits.timeout_s)

    source = samples()
    stream = encode_stream(source, fmt, reply.sample_rate)  # the turn's: a switch may change the kit's
    try:
        async for data in stream:
            record.bytes_sent += len(data)
            yield data
        if record.outcome != "timeout":
            record.outcome = "done"
    except GeneratorExit:
        record.outcome = "disconnected"
        raise
    except BaseException as error:
        cancelled = isinstance(error, anyio.get_cancelled_exc_class())
        record.outcome = "disconnected" if cancelled else "failed"
        if not cancelled:
            log.exception("request %s failed mid-stream", record.id)
        raise
    finally:
        with anyio.CancelScope(shield=True):  # close even when the disconnect cancelled this task
            for closable in (stream, source, reply):
                await closable.aclose()  # type: ignore[attr-defined]
        state.finish(record)


def _log_finished(record: RequestRecord) -> None:
    timings = record.reply.timings.as_dict() if record.reply is not None else {}
    log.info("request %s %s %s: voice=%s bytes=%d wall=%.2fs timings=%s", record.id, record.route, record.outcome,
             record.voice, record.bytes_sent, time.perf_counter() - record.started, timings)
