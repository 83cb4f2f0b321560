"""`RemoteKit.realtime()` / `arealtime()`: a spoken conversation with a voicekit server over `WS /v1/realtime`.

    kit = voicekit.connect("http://127.0.0.1:7860")
    with kit.realtime(voice="en_US-joe-medium") as session:      # kit.arealtime() in async code
        session.append_audio(pcm16_24k)                         # or a float32/int16 array and its sample_rate
        for event in session.events(timeout=5):                 # voicekit.listening.events.Event
            print(event.type)

The same session API as a local kit's (voicekit/listening/session.py and blocking.py): `AsyncRemoteSession` is the
async form, on the event loop that uses it; the sync form is the local kit's own bridge, `RealtimeSession`, driving
an `AsyncRemoteSession` on the remote kit's loop thread, so there is one implementation of each call. Events are the
server's, as `Event`s (audio deltas decoded to float32 at 24 kHz in `Event.audio`); `history` is kept from them as
the session keeps it (user transcripts and typed messages, the assistant's transcripts, cut and truncated replies).
What differs from a local session:
- the server checks what it is sent: a bad event comes back as an `error` event (the voice, the text of `ask` and
  the echo mode are checked here first, and raise as they do locally);
- `set_echo_cancellation(mode)` is answered by `session.updated`; `send(event)` sends any other client event;
- a past conversation (`history=`: `session.history` of an earlier session, checked as a local session checks it,
  ValueError when it is not user and assistant messages with text) is sent as `conversation.item.create` events, as
  OpenAI's protocol restores one (the server's items get new ids);
- a refused connection raises when the session opens: `remote.realtime()`, or the first awaited call of an
  `arealtime()` session (or `await session.connect()`, `async with`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from voicekit.audio import StreamResampler, float_to_pcm16, pcm16_to_float
from voicekit.errors import RemoteError, ServerUnavailableError, first_line, server_error
from voicekit.listening.asr import to_float_mono
from voicekit.listening.blocking import RealtimeSession
from voicekit.listening.echo import ECHO_MODES
from voicekit.listening.events import INPUT_RATE, OUTPUT_RATE, Event, SpokenReply, restore_history

if TYPE_CHECKING:
    from voicekit.client import RemoteKit

MAX_FRAME_BYTES = 16 << 20  # a server event (audio deltas are a sentence's audio at most)
OPEN_TIMEOUT_S = 10.0


class AsyncRemoteSession:
    """A realtime session on a voicekit server, for async code (use it from one event loop; see the module
    docstring). `RemoteKit.arealtime()` makes one; it connects on its first awaited call."""

    def __init__(self, kit: RemoteKit, voice: str | None = None, instructions: str | None = None,
                 history: list[dict[str, Any]] | None = None) -> None:
        past = restore_history(history)  # first: a bad history opens nothing
        self.kit = kit
        self.id = ""
        self.voice = kit.resolve_voice(voice)
        self.instructions = instructions or ""
        self.description: dict[str, Any] = {}  # the session as session.created / session.updated show it
        self.history: list[dict[str, Any]] = []
        self.response: str | None = None  # the id of the reply in progress
        self._replies: dict[str, SpokenReply] = {}  # by response id, then by item id once done (for truncation)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._resampler = StreamResampler(INPUT_RATE, INPUT_RATE)
        self._cancels = 0  # response.cancel sent and not yet answered
        self._ws: ClientConnection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._lost: Exception | None = None
        settings = {"voice": voice and self.voice, "instructions": instructions}
        if any(value is not None for value in settings.values()):
            self.send({"type": "session.update", "session": {k: v for k, v in settings.items() if v is not None}})
        for item in past:  # a past conversation, as OpenAI's protocol restores one
            part = "input_text" if item["role"] == "user" else "output_text"
            self.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": item["role"], "content": [{"type": part, "text": item["content"]}],
                **({"status": "incomplete"} if item.get("interrupted") else {})}})

    # -- connecting -------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket (once; later calls wait for it). Raises AuthenticationError when the credentials are
        refused, RemoteError (code `busy`) when the server has as many sessions as it takes, ServerUnavailableError
        when it cannot be reached."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        kit = self.kit
        try:
            ws = await ws_connect(kit.socket_url(), additional_headers=kit.socket_headers(), max_size=MAX_FRAME_BYTES,
                                  open_timeout=OPEN_TIMEOUT_S, compression=None)
        except InvalidStatus as refused:
            raise await self._refusal(refused.response.status_code) from None
        except (OSError, TimeoutError, WebSocketException) as error:
            raise ServerUnavailableError(f"cannot open a realtime session on the voicekit server at {kit.url}: "
                                         f"{first_line(error)}") from None
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S))
        except ConnectionClosed as closed:  # a server may also accept, then close with the reason
            raise await self._refusal(closed.rcvd.code if closed.rcvd else 1006,
                                      closed.rcvd.reason if closed.rcvd else "") from None
        except (asyncio.TimeoutError, ValueError) as error:
            await ws.close()
            raise RemoteError(f"the server at {kit.url} did not open a realtime session: {first_line(error)}") from None
        except BaseException:
            await ws.close()
            raise
        if not isinstance(first, dict) or first.get("type") != "session.created":
            await ws.close()
            raise RemoteError(f"the server at {kit.url} did not open a realtime session")
        self._ws = ws
        self._take(first)
        self._tasks = [asyncio.ensure_future(self._read(ws)), asyncio.ensure_future(self._write(ws))]

    async def _refusal(self, status: int, reason: str = "") -> Exception:
        """The error for a refused session: an HTTP status, or a close code before the session began. A server that
        refuses a socket before accepting it answers 403 whether the credentials were wrong (1008) or it was full
        (1013): the HTTP API, which answers 401 to wrong credentials, tells which."""
        kit = self.kit
        if status in (401, 403, 1008, 1013):
            response = await asyncio.to_thread(kit._send, lambda: kit._client.get("/v1/audio/voices"))
            kit._checked(response)  # raises AuthenticationError when the credentials are refused
            if status in (403, 1013):
                return server_error(RemoteError, f"the voicekit server at {kit.url} has as many realtime sessions "
                                                 "as it can take: close one or try again later", status=status,
                                    code="busy")
        what = f"HTTP {status}" if status < 1000 else f"close code {status}"
        hint = f": {reason}" if reason else "; an older server, without /v1/realtime?" if status == 404 else ""
        return server_error(RemoteError, f"the voicekit server at {kit.url} refused a realtime session ({what}{hint})",
                            status=status)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self._take(json.loads(frame))
        except ConnectionClosed:
            pass
        except Exception as error:  # a frame that is not JSON: the server is not speaking the protocol
            self._lost = RemoteError(f"the voicekit server at {self.kit.url} sent a bad realtime event: {error}")
        finally:
            if not self._closing:
                reason = ws.close_reason or f"close code {ws.close_code}"
                self._lost = self._lost or ServerUnavailableError(
                    f"the voicekit server at {self.kit.url} ended the realtime session ({reason})")
                self._put(Event("error", {"error": {"type": "server_error", "code": "connection_closed",
                                                    "message": str(self._lost)}}))
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(self._lost or ServerUnavailableError("the realtime session was closed"))
            self._events.put_nowait(None)

    async def _write(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader reports it
            while (frame := await self._outbox.get()) is not None:
                await ws.send(frame)

    # -- events -----------------------------------------------------------------------------------------

    def _take(self, body: dict[str, Any]) -> None:
        """A server event: keep the session's bookkeeping, then hand it to the consumer (and to `ask`)."""
        kind, event_id = str(body.pop("type", "")), body.pop("event_id", None)
        audio = pcm16_to_float(base64.b64decode(body.pop("delta"))) if kind == "response.output_audio.delta" else None
        event = Event(kind, body, audio, **({"event_id": event_id} if event_id else {}))
        if self._note(event):
            self._put(event)

    def _put(self, event: Event) -> None:
        self._events.put_nowait(event)
        for entry in [entry for entry in self._waiters if entry[0](event)]:
            self._waiters.remove(entry)
            if not entry[1].done():
                entry[1].set_result(event)

    def _note(self, event: Event) -> bool:
        """Follow the conversation as the server's session does; False for an event the consumer need not see."""
        kind, data = event.type, event.data
        if kind in ("session.created", "session.updated"):
            self.description = data.get("session", {})
            self.id = self.description.get("id", self.id)
            self.voice = self.description.get("voice", self.voice)
            self.instructions = self.description.get("instructions", self.instructions)
        elif kind == "conversation.item.added" and data.get("item", {}).get("role") in ("user", "assistant"):
            item = data["item"]
            text = " ".join(part.get("text", "") for part in item.get("content", []))
            self.history.append({"role": item["role"], "content": text, "id": item["id"],
                                 **({"interrupted": True} if item.get("status") == "incomplete" else {})})
        elif kind == "conversation.item.input_audio_transcription.completed":
            if data.get("transcript") and not data.get("echo"):  # echo and nothing heard: no turn, no reply
                self.history.append({"role": "user", "content": data["transcript"], "id": data["item_id"]})
        elif kind == "response.created":
            self.response = data["response"]["id"]
            self._replies[self.response] = SpokenReply(self.response, "", "")
        elif kind == "response.output_item.added" and data.get("response_id") in self._replies:
            self._replies[data["response_id"]].item_id = data["item"]["id"]
        elif kind == "response.output_audio_transcript.delta" and data.get("response_id") in self._replies:
            reply = self._replies[data["response_id"]]
            delta = data["delta"]
            reply.piece_ends.append((delta[1:] if reply.piece_ends and delta.startswith(" ") else delta, reply.sent_s))
        elif kind == "response.output_audio.delta" and data.get("response_id") in self._replies:
            reply = self._replies[data["response_id"]]
            reply.sent_s += len(event.audio) / OUTPUT_RATE  # type: ignore[arg-type]
            if reply.piece_ends:
                reply.piece_ends[-1] = (reply.piece_ends[-1][0], reply.sent_s)
        elif kind == "response.output_audio_transcript.done" and data.get("response_id") in self._replies:
            self._replies[data["response_id"]].message = data.get("transcript", "")  # what was said (or heard)
        elif kind == "response.done":
            return self._done(data["response"])
        elif kind == "conversation.item.truncated":
            self._truncated(data["item_id"], int(data["audio_end_ms"]))
        elif kind == "error" and data.get("error", {}).get("code") == "response_cancel_not_active" and self._cancels:
            self._cancels -= 1  # the reply we cancelled had just finished: nothing went wrong
            return False
        return True

    def _done(self, summary: dict[str, Any]) -> bool:
        if self.response == summary["id"]:
            self.response = None
        reply = self._replies.pop(summary["id"], None)
        if (summary.get("status_details") or {}).get("reason") == "client_cancelled" and self._cancels:
            self._cancels -= 1
        if reply is None:
            return True
        reply.status = summary["status"]
        interrupted = reply.status != "completed"
        self.history.append({"role": "assistant", "content": reply.message, "id": reply.item_id,
                             **({"interrupted": True} if interrupted else {})})
        self._replies[reply.item_id] = reply
        return True

    def _truncated(self, item_id: str, audio_end_ms: int) -> None:
        reply = self._replies.get(item_id)
        for item in self.history:
            if reply is not None and item["id"] == item_id and item["role"] == "assistant":
                heard = reply.heard_text(max(0, audio_end_ms) / 1000)  # as the server's session tells it
                item["content"], item["interrupted"] = (f"{heard}…" if heard else ""), True

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event (None once the session is closed); TimeoutError after `timeout` seconds."""
        if not self._closing:
            await self.connect()
        try:  # one already queued is returned even with timeout 0 (wait_for would time out before getting it)
            event = self._events.get_nowait() if self._events.qsize() else await asyncio.wait_for(self._events.get(),
                                                                                                  timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            raise TimeoutError(f"no realtime event within {timeout} s") from None
        if event is None:
            self._events.put_nowait(None)  # closed: every later call says so too
        return event

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.next_event()) is not None:
            yield event

    def conversation(self) -> list[dict[str, Any]]:
        """The history as messages (`role`, `content`, `interrupted` for a cut reply), for `kit.chat(history=...)`."""
        return [dict(item) for item in self.history]

    # -- input ------------------------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        """Send a client event as it is (docs/API.md, "Realtime"); the server answers bad ones with `error` events."""
        if self._lost is not None:
            raise self._lost
        if not self._closing:
            self._outbox.put_nowait(json.dumps(event))

    async def append_audio(self, audio: bytes | np.ndarray, sample_rate: int = INPUT_RATE) -> None:
        """Feed microphone audio: pcm16 little-endian bytes, or an int16/float32 array, mono at `sample_rate`."""
        await self.connect()
        if isinstance(audio, bytes | bytearray | memoryview) and sample_rate == INPUT_RATE:
            if len(audio) % 2:
                raise ValueError("pcm16 audio must have an even number of bytes")
            pcm = bytes(audio)
        else:
            samples = pcm16_to_float(bytes(audio)) if isinstance(audio, bytes | bytearray | memoryview) else audio
            if sample_rate != self._resampler.from_rate:
                self._resampler = StreamResampler(sample_rate, INPUT_RATE)
            pcm = float_to_pcm16(self._resampler.push(to_float_mono(samples)))
        if pcm:
            self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")})

    async def ask(self, text: str) -> str | None:
        """Typed input: add `text` and answer it (cancelling a running reply); returns the response id (None, and an
        `error` event, when the server could not start one)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a message needs some text")
        await self.connect()
        self.cancel()
        answered: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((_answers_ask, answered))
        self.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text.strip()}]}})
        self.send({"type": "response.create"})
        event = await asyncio.wait_for(answered, OPEN_TIMEOUT_S)
        return event.data["response"]["id"] if event.type == "response.created" else None

    def commit(self) -> None:
        """End the user's turn now (without waiting for silence): it is transcribed and answered."""
        self.send({"type": "input_audio_buffer.commit"})

    def clear(self) -> None:
        """Drop the audio heard since the last turn."""
        self.send({"type": "input_audio_buffer.clear"})

    def cancel(self) -> bool:
        """Stop the running reply (its audio stops; history keeps what was played); False when none runs."""
        if self.response is None:
            return False
        self._cancels += 1
        self.send({"type": "response.cancel"})
        return True

    def update(self, voice: str | None = None, instructions: str | None = None) -> None:
        """Change the voice (checked here: UnknownVoiceError) or the instructions (the system prompt) for later
        replies; the server answers with `session.updated`."""
        settings = {"voice": None if voice is None else self.kit.resolve_voice(voice), "instructions": instructions}
        self.send({"type": "session.update", "session": {k: v for k, v in settings.items() if v is not None}})

    def set_echo_cancellation(self, mode: str) -> None:
        """Echo cancellation `auto`, `on` or `off` from now on (voicekit/listening/echo.py)."""
        if mode not in ECHO_MODES:
            raise ValueError(f"echo cancellation must be one of {', '.join(ECHO_MODES)}, not {mode!r}")
        self.send({"type": "session.update", "session": {"echo_cancellation": mode}})

    # -- lifetime ---------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send what is queued, then hang up (the server stops a reply in progress) and end the event stream."""
        if self._closing:
            return
        self._closing = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        if self._ws is not None:
            self._outbox.put_nowait(None)
            reader, writer = self._tasks
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 5)
            await self._ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)
        self._events.put_nowait(None)

    async def __aenter__(self) -> AsyncRemoteSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _answers_ask(event: Event) -> bool:
    """The server's answer to `ask`'s response.create: the reply starts, or it cannot."""
    return event.type == "response.created" or (event.type == "error" and event.data.get("error", {}).get("code")
                                                 in ("conversation_already_has_active_response", "nothing_to_answer"))


class RemoteRealtimeSession(RealtimeSession):
    """A realtime session on a voicekit server for sync code: the local kit's bridge (voicekit/listening/blocking.py)
    driving an `AsyncRemoteSession` on the remote kit's loop thread. Opening it connects (and raises if refused)."""

    def __init__(self, kit: RemoteKit, **session_args: Any) -> None:
        self._loop = kit.realtime_loop()

        async def make() -> AsyncRemoteSession:
            session = AsyncRemoteSession(kit, **session_args)
            await session.connect()
            return session

        self.session: AsyncRemoteSession = self._loop.run(make())

    def set_echo_cancellation(self, mode: str) -> None:
        """Echo cancellation `auto`, `on` or `off` from now on."""
        self._call(lambda: self.session.set_echo_cancellation(mode))

    def send(self, event: dict[str, Any]) -> None:
        """Send a client event as it is (docs/API.md, "Realtime")."""
        self._call(lambda: self.session.send(event))

