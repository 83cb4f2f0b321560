"""Streaming a reply's audio as it is made, for the routes that speak (speech.py, chat.py).

`stream_reply` takes a running slot of the server's Admission (429 when busy), waits for the first audio (so a
failure before it is still a JSON error), then streams the rest; the reply is closed in `finally`, so a client that
disconnects mid-stream aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from voicekit.errors import VoicekitError
from voicekit.pipeline import AudioChunk
from voicekit.serve.admission import Busy
from voicekit.serve.audio import AudioFormat, encode_stream
from voicekit.serve.deps import RequestRecord, ServerState, busy_error
from voicekit.serve.schema import ApiError

log = logging.getLogger("voicekit.server")

MAX_TEXT_HEADER = 4096


class AudioStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client went away."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def stream_reply(state: ServerState, record: RequestRecord, fmt: AudioFormat, request: Request) -> Response:
    """Wait for the first audio (so a failure before it is still a JSON error), then stream the rest.

    A client that goes away before the first audio aborts the reply at once, like one that leaves mid-stream.
    """
    kit, reply = state.kit, record.reply
    try:
        await state.admission.enter()
    except Busy as busy:
        await reply.aclose()
        raise busy_error(busy, record.id, record.route) from None
    record.admitted = True
    record.started = time.perf_counter()  # the time limit counts from here, not from the wait in line
    state.active[record.id] = record
    log.info("request %s %s started: voice=%s format=%s", record.id, record.route, record.voice, fmt.name)
    first_task = asyncio.ensure_future(_next_chunk(reply))
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    gone, first, error = True, None, None  # type: bool, AudioChunk | None, BaseException | None
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
    headers = {"X-Request-Id": record.id, "X-Sample-Rate": str(kit.sample_rate), "X-Voice": record.voice,
               "Cache-Control": "no-store"}
    if fmt.name == "pcm":
        headers["X-Audio-Format"] = "s16le; channels=1"
    headers.update(_known_reply_headers(record))
    return AudioStreamResponse(_body(state, record, fmt, first), media_type=fmt.media_type, headers=headers)


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


async def _next_chunk(chunks: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    return await anext(chunks, None)


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is already read, so only a disconnect arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(state: ServerState, record: RequestRecord, fmt: AudioFormat,
                first: AudioChunk | None) -> AsyncIterator[bytes]:
    reply = record.reply

    async def samples() -> AsyncGenerator[np.ndarray, None]:
        if first is not None:
            yield first.samples
        async for chunk in reply:  # the turn ends by itself at the time limit (Pipeline.run)
            yield chunk.samples
        if reply.turn.timed_out:
            record.outcome = "timeout"
            log.warning("request %s ran past its time limit (%g s): stopped", record.id,
                        state.admission.limits.timeout_s)

    source = samples()
    stream = encode_stream(source, fmt, state.kit.sample_rate)
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
            await stream.aclose()
            await source.aclose()
            await reply.aclose()
        state.finish(record)
