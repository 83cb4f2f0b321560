"""The stream behind `voicekit.connect()`'s replies: one request to a server's event route (voicekit/serve/events.py),
its NDJSON events read as the kit's `AudioChunk`s, with their real piece marks, and the kit's `Turn` filled in
from them (text, sentences, pieces, timings), so a remote reply reads exactly as a local one.

`EventStream` is async only. Sync replies iterate it on the RemoteKit's loop thread through
`EventLoopThread.iterate`, the bridge a local Kit iterates its pipeline with (`SyncChunks`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from voicekit.audio import pcm16_to_float
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import RemoteError, server_error
from voicekit.pipeline import AudioChunk, Timings, Turn

if TYPE_CHECKING:
    from voicekit.client import RemoteKit


class EventStream:
    """One say/chat request to an event route: `open()` sends it, `chunks()` streams its audio into `turn`."""

    def __init__(self, kit: RemoteKit, route: str, body: dict[str, Any], turn: Turn) -> None:
        self.kit, self.route, self.body, self.turn = kit, route, body, turn
        self.request_id = ""
        self.closed = False
        self._client: httpx.AsyncClient | None = None  # one per stream: it belongs to the loop that reads it
        self._response: httpx.Response | None = None

    async def open(self) -> None:
        """Send the request; the server answers once the first audio is ready, so a refusal raises here."""
        self.turn.restart()
        self._client = httpx.AsyncClient(**self.kit._options)
        try:
            request = self._client.build_request("POST", self.route, json=self.body)
            self._response = await self._awaited(self._client.send(request, stream=True))
            if not self._response.is_success:
                await self._awaited(self._response.aread())
            self.kit._checked(self._response, self.body.get("voice"))
        except BaseException:
            await self.aclose()
            raise

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        """The reply's audio as it arrives; leaving early hangs up, and the server aborts the engine requests."""
        try:
            if self._response is None:
                await self.open()
            assert self._response is not None
            lines = self._response.aiter_lines()
            while (text := await self._awaited(anext(lines, None))) is not None:
                chunk = self._take(json.loads(text)) if text.strip() else None
                if chunk is not None:
                    yield chunk
            if not self.turn.done:
                raise RemoteError(f"the voicekit server at {self.kit.url} ended the reply without finishing it")
        finally:
            await self.aclose()

    def _take(self, event: dict[str, Any]) -> AudioChunk | None:
        """Fill the turn in from one event; the chunk an `audio` event carries."""
        turn, kind = self.turn, event.get("type")
        if kind == "audio":
            samples = pcm16_to_float(base64.b64decode(event["audio"]))
            turn.timings.audio_s += len(samples) / self.kit.sample_rate
            index = int(event["piece_index"])
            piece = turn.pieces[index] if 0 <= index < len(turn.pieces) else ""
            return AudioChunk(samples, self.kit.sample_rate, index, piece)
        if kind == "start":
            if int(event["sample_rate"]) != self.kit.sample_rate:
                raise RemoteError(f"the server at {self.kit.url} streams {event['sample_rate']} Hz, not the "
                                  f"{self.kit.sample_rate} Hz it announced: reconnect")
            self.request_id, turn.voice = str(event["id"]), str(event["voice"])  # the server resolved the voice
            turn.timings.ttfa_s = event.get("ttfa_s")
        elif kind == "text":
            turn.text += event["delta"]
        elif kind == "sentences":
            turn.sentences = list(event["sentences"])
        elif kind == "piece":
            turn.pieces.append(str(event["text"]))
            turn.timings.pieces = len(turn.pieces)
        elif kind == "done":
            turn.text, turn.sentences, turn.pieces = event["text"], list(event["sentences"]), list(event["pieces"])
            received = turn.timings.audio_s  # exact, where the server's JSON rounds it
            turn.timings = Timings.from_dict(event["timings"])
            turn.timings.audio_s = received
            turn.timed_out, turn.done = bool(event.get("timed_out")), True
        elif kind == "error":
            raise server_error(RemoteError, f"the voicekit server at {self.kit.url} failed mid-reply: "
                                            f"{event.get('message')}", code=event.get("code"))
        return None  # unknown types are skipped: a newer server may say more

    async def _awaited(self, awaitable: Any) -> Any:
        """Await an httpx call; an unreachable server or a timeout becomes the kit's one clear error."""
        try:
            return await awaitable
        except httpx.TransportError as error:
            raise self.kit.unavailable(error) from None

    async def aclose(self) -> None:
        """Hang up (safe to call more than once): the server stops the request and aborts its engine work."""
        self.closed = True
        if self._response is not None:
            await self._response.aclose()
        if self._client is not None:
            await self._client.aclose()


class SyncChunks(Iterator[AudioChunk]):
    """An opened stream's chunks for sync code, iterated on `loop` (the bridge a local Kit uses)."""

    def __init__(self, loop: EventLoopThread, stream: EventStream) -> None:
        self._loop, self._stream = loop, stream
        self._chunks = loop.iterate(stream.chunks)

    def __next__(self) -> AudioChunk:
        return next(self._chunks)

    def close(self) -> None:
        """Hang up: a started stream is cancelled on the loop, which closes it; one never read is closed here."""
        self._chunks.close()
        if not self._stream.closed:
            self._loop.run(self._stream.aclose())

    def __del__(self) -> None:
        # a reply dropped unread: hang up without waiting (this may run on any thread)
        if not self._stream.closed and not self._loop.loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stream.aclose(), self._loop.loop)
