"""The streams behind `voicekit.connect()`'s replies: one HTTP request each, its audio body as `AudioChunk`s.

`Call` holds one say/chat request (its body, the audio decoder, and the kit's `Turn` it fills in from the
response headers and, for a chat, the server's record of the turn); `AudioStream` and `AsyncAudioStream` read
its body for sync and async code. They mirror each other line for line, as sync and async iterators must.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from voicekit.audio import WAV_HEADER_SIZE, pcm16_to_float
from voicekit.errors import RemoteError
from voicekit.pipeline import AudioChunk, Timings, Turn

if TYPE_CHECKING:
    from voicekit.client import RemoteKit

UNKNOWN_PIECE = -1  # HTTP audio has no piece marks


class Call:
    """One say/chat request: its body, the decoder of its audio, and the kit's `Turn` it fills in."""

    def __init__(self, kit: RemoteKit, route: str, body: dict[str, Any], turn: Turn) -> None:
        self.kit, self.route, self.body, self.turn = kit, route, body, turn
        self.request_id = ""
        self.header_left = WAV_HEADER_SIZE if route == "/chat" else 0  # /chat streams a WAV, say raw PCM
        self.pending = b""
        self.waited = 0.0  # seconds spent waiting for audio (say's tts_s)
        self.server_ttfa: float | None = None

    def opened(self, response: httpx.Response) -> None:
        """Check the response's status and headers and take what they already tell."""
        self.kit._checked(response, self.body.get("voice"))
        rate = int(response.headers.get("x-sample-rate", self.kit.sample_rate))
        if rate != self.kit.sample_rate:
            raise RemoteError(f"the server at {self.kit.url} streams {rate} Hz, not the {self.kit.sample_rate} Hz "
                              "it announced: reconnect")
        self.request_id = response.headers.get("x-request-id", "")
        self.turn.voice = response.headers.get("x-voice", self.turn.voice)  # the server resolved it
        ttfa = response.headers.get("x-time-to-first-audio")
        self.server_ttfa = float(ttfa) if ttfa else None
        if self.turn.message is None:
            self.turn.text = " ".join(self.turn.script)
        elif "x-reply-text" in response.headers:  # sequential chat: the text was final before the first audio
            self.turn.text = unquote(response.headers["x-reply-text"])

    def decode(self, piece: bytes) -> AudioChunk | None:
        """The samples in `piece` (after the WAV header; an odd byte waits for the next piece)."""
        data = self.pending + piece
        if self.header_left:
            skipped = min(self.header_left, len(data))
            data, self.header_left = data[skipped:], self.header_left - skipped
        usable = len(data) - len(data) % 2
        self.pending = data[usable:]
        if not usable:
            return None
        samples = pcm16_to_float(data[:usable])
        self.turn.timings.audio_s += len(samples) / self.kit.sample_rate
        return AudioChunk(samples, self.kit.sample_rate, UNKNOWN_PIECE, "")

    def finish(self, result: dict[str, Any] | None) -> None:
        """Fill in the turn at the end of the audio: the server's record of a chat, else what the client saw."""
        turn = self.turn
        if result is not None:
            turn.text, turn.sentences = result["text"], list(result["sentences"])
            turn.pieces = list(result.get("pieces", turn.sentences))
            turn.timings = Timings.from_dict(result["timings"])
        else:
            turn.sentences = turn.pieces = list(turn.script)
            turn.timings.ttfa_s, turn.timings.tts_s = self.server_ttfa, self.waited
            turn.timings.total_s = turn.elapsed()
            turn.timings.sentences = turn.timings.pieces = len(turn.sentences)
        turn.done = True


class AudioStream(Iterator[AudioChunk]):
    """A call's audio for sync code; the request is sent (and its errors raised) when this is made."""

    def __init__(self, kit: RemoteKit, call: Call) -> None:
        self._kit, self._call = kit, call
        client = kit._client
        request = client.build_request("POST", call.route, json=call.body)
        self._response = kit._send(lambda: client.send(request, stream=True))
        try:
            if not self._response.is_success:
                self._response.read()
            call.opened(self._response)
        except BaseException:
            self._response.close()
            raise
        call.waited = call.turn.elapsed()
        self._pieces = self._response.iter_bytes()
        self._ended = False

    def __next__(self) -> AudioChunk:
        while not self._ended:
            began = time.perf_counter()
            try:
                piece = self._kit._send(lambda: next(self._pieces))
            except StopIteration:
                self.close()
                self._call.finish(self._result())
                break
            except BaseException:
                self.close()
                raise
            finally:
                self._call.waited += time.perf_counter() - began
            chunk = self._call.decode(piece)
            if chunk is not None:
                return chunk
        raise StopIteration

    def _result(self) -> dict[str, Any] | None:
        if self._call.route != "/chat":
            return None
        response = self._kit._send(lambda: self._kit._client.get(f"/chat/{self._call.request_id}"))
        return response.json() if response.is_success else None

    def close(self) -> None:
        """Hang up: the server stops the request and aborts its engine work."""
        self._ended = True
        self._response.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._response.close()


class AsyncAudioStream(AsyncIterator[AudioChunk]):
    """A call's audio for async code, on a client of the running loop; the request goes out on the first step."""

    def __init__(self, kit: RemoteKit, call: Call) -> None:
        self._kit, self._call = kit, call
        self._client: httpx.AsyncClient | None = None
        self._response: httpx.Response | None = None
        self._pieces: AsyncIterator[bytes] | None = None
        self._ended = False

    async def _open(self) -> AsyncIterator[bytes]:
        self._client = httpx.AsyncClient(**self._kit._options)
        request = self._client.build_request("POST", self._call.route, json=self._call.body)
        self._call.turn.restart()
        self._response = await self._client.send(request, stream=True)  # errors: see _awaited
        if not self._response.is_success:
            await self._response.aread()
        self._call.opened(self._response)
        self._call.waited = self._call.turn.elapsed()
        return self._response.aiter_bytes()

    async def __anext__(self) -> AudioChunk:
        while not self._ended:
            began = time.perf_counter()
            try:
                self._pieces = self._pieces or await self._awaited(self._open())
                piece = await self._awaited(anext(self._pieces))
            except StopAsyncIteration:
                result = None
                if self._call.route == "/chat":
                    response = await self._awaited(self._client.get(f"/chat/{self._call.request_id}"))  # type: ignore
                    result = response.json() if response.is_success else None
                await self.aclose()
                self._call.finish(result)
                break
            except BaseException:
                await self.aclose()
                raise
            finally:
                self._call.waited += time.perf_counter() - began
            chunk = self._call.decode(piece)
            if chunk is not None:
                return chunk
        raise StopAsyncIteration

    async def _awaited(self, awaitable: Any) -> Any:
        """Await an httpx call, with the same clear errors as the sync calls."""
        try:
            return await awaitable
        except httpx.TransportError as error:
            raise self._kit.unavailable(error) from None

    async def aclose(self) -> None:
        """Hang up: the server stops the request and aborts its engine work."""
        self._ended = True
        if self._response is not None:
            await self._response.aclose()
        if self._client is not None:
            await self._client.aclose()
