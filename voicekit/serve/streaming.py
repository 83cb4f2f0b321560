"""The life of one streaming request, shared by every route that streams a reply (api.py's `/chat` and
`/v1/audio/speech`, events.py's NDJSON events): its record, admission, the wait for its first audio, and a body
that always closes the reply (so a client that goes away aborts the engine requests behind it).

A route makes the reply (`kit.achat` / `kit.asay`, which check the input), wraps it in a `RequestRecord`, calls
`open_reply` (429 when busy, a JSON error when it fails before any audio, None once the client has gone), then
streams `stream_body(...)` in an `AudioStreamResponse`, encoding the chunks its own way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from voicekit.errors import VoicekitError
from voicekit.pipeline import AudioChunk
from voicekit.serve.admission import Admission, Busy
from voicekit.serve.metrics import Metrics
from voicekit.serve.schema import ApiError, ChatRequest, voicekit_error

log = logging.getLogger("voicekit.server")

FINISHED_KEPT = 64

#: how a route turns a reply's chunks into the bytes of its body
Encoder = Callable[[AsyncIterator[AudioChunk]], AsyncIterator[bytes]]


@dataclass
class RequestRecord:
    """One streaming request: its reply (the turn: voice, text, timings) and the server's own bookkeeping."""

    id: str
    route: str
    reply: Any
    started: float = field(default_factory=time.perf_counter)  # once admitted
    arrived: float = field(default_factory=time.perf_counter)
    first_audio_s: float | None = None  # from its arrival (the wait in line included), for /metrics
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
        self.sessions: set[str] = set()  # open realtime sessions (realtime.py)
        self.metrics = Metrics(self)

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
        self.metrics.observe_stream(record, time.perf_counter())
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


def start_chat(state: ServerState, body: ChatRequest) -> Any:
    """The kit's reply to a chat request (not started yet), bounded by the server's request time limit; a 400
    for bad input."""
    options = {key: value for key, value in (("system_prompt", body.system_prompt),
                                             ("temperature", body.temperature), ("seed", body.seed),
                                             ("max_tokens", body.max_tokens))
               if value is not None}
    try:
        return state.kit.achat(body.message, voice=body.voice, history=body.history, mode=body.mode,
                               time_limit_s=state.admission.limits.timeout_s, **options)
    except VoicekitError as error:
        raise voicekit_error(error, "message") from None


async def open_reply(state: ServerState, record: RequestRecord, request: Request) -> tuple[bool, AudioChunk | None]:
    """Admit the request and wait for its first audio (so a failure before it is still a JSON error):
    (gone, first chunk). `gone`: the client left before it (the reply is aborted and finished; answer 499).

    Raises ApiError: 429 when the server is busy, 504 past the time limit, 500 when the reply failed.
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
    log.info("request %s %s started: voice=%s", record.id, record.route, record.voice)
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
            elif first is not None:
                record.first_audio_s = time.perf_counter() - record.arrived
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
    return gone, first


def reply_headers(state: ServerState, record: RequestRecord) -> dict[str, str]:
    """The headers every streamed reply starts with."""
    return {"X-Request-Id": record.id, "X-Sample-Rate": str(record.reply.sample_rate), "X-Voice": record.voice,
            "Cache-Control": "no-store"}


async def stream_body(state: ServerState, record: RequestRecord, first: AudioChunk | None,
                      encode: Encoder) -> AsyncIterator[bytes]:
    """The body of an opened request: `encode` of its chunks (`first` included), counted and finished in the
    end; the reply is closed however the body ends (done, failed, or the client gone)."""
    reply = record.reply

    async def chunks() -> AsyncIterator[AudioChunk]:
        if first is not None:
            yield first
        async for chunk in reply:  # the turn ends by itself at the time limit (Pipeline.run)
            yield chunk
        if reply.turn.timed_out:
            record.outcome = "timeout"
            log.warning("request %s ran past its time limit (%g s): stopped", record.id,
                        state.admission.limits.timeout_s)

    source = chunks()
    stream = encode(source)
    try:
        async for data in stream:
            record.bytes_sent += len(data)
            yield data
        if record.outcome == "streaming":  # not a timeout, nor a failure the encoder reported in its own way
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
            closables: tuple[Any, ...] = (stream, source, reply)  # async generators and the reply
            for closable in closables:
                await closable.aclose()
        state.finish(record)


async def _next_chunk(chunks: AsyncIterator[Any]) -> Any:
    return await anext(chunks, None)


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is already read, so only a disconnect arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _log_finished(record: RequestRecord) -> None:
    timings = record.reply.timings.as_dict() if record.reply is not None else {}
    log.info("request %s %s %s: voice=%s bytes=%d wall=%.2fs timings=%s", record.id, record.route, record.outcome,
             record.voice, record.bytes_sent, time.perf_counter() - record.started, timings)
