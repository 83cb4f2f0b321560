"""The life of one streaming request, shared by every route that streams a reply (speech.py, chat.py, and events.py's
NDJSON events): admission, the wait for its first audio, and a body that always closes the reply (so a client that
goes away aborts the engine requests behind it). Its record and the server's state are deps.py's.

A route makes the reply (`kit.achat` / `kit.asay`, which check the input: `start_chat` for a chat request), wraps it
in a `RequestRecord`, calls `open_reply` (429 when busy, a JSON error when it fails before any audio, `gone` once the
client has left), then streams `stream_body(...)` in an `AudioStreamResponse`, encoding the chunks its own way;
`stream_reply` does all of it for the audio routes (WAV, PCM or what ffmpeg encodes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
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
from voicekit.serve.schema import ApiError, ChatRequest, voicekit_error

if TYPE_CHECKING:
    from voicekit.kit import AsyncReply

log = logging.getLogger("voicekit.server")

MAX_TEXT_HEADER = 4096

#: how a route turns a reply's chunks into the bytes of its body
Encoder = Callable[[AsyncIterator[AudioChunk]], AsyncIterator[bytes]]


class AudioStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client went away."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def start_chat(state: ServerState, body: ChatRequest) -> AsyncReply:
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


async def stream_reply(state: ServerState, record: RequestRecord, fmt: AudioFormat, request: Request) -> Response:
    """The reply's audio as `fmt`, streamed once its first audio is out (499 when the client left before it)."""
    gone, first = await open_reply(state, record, request)
    if gone:
        return Response(status_code=499)  # nobody is listening any more
    rate, headers = record.reply.sample_rate, reply_headers(state, record)  # the turn's: a switch changes the kit's
    if fmt.name == "pcm":
        headers["X-Audio-Format"] = "s16le; channels=1"
    headers.update(_known_reply_headers(record))

    def encode(chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[bytes]:
        return encode_stream(_samples(chunks), fmt, rate)

    return AudioStreamResponse(stream_body(state, record, first, encode), media_type=fmt.media_type,
                               headers=headers)


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
        raise busy_error(busy, record.id, record.route) from None
    record.admitted = True
    record.started = time.perf_counter()  # the time limit counts from here, not from the wait in line
    state.active[record.id] = record
    log.info("request %s %s started: voice=%s", record.id, record.route, record.voice)
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

    async def chunks() -> AsyncGenerator[AudioChunk, None]:
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


async def _samples(chunks: AsyncIterator[AudioChunk]) -> AsyncGenerator[np.ndarray, None]:
    async for chunk in chunks:
        yield chunk.samples


async def _next_chunk(chunks: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    return await anext(chunks, None)


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is already read, so only a disconnect arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
