"""`voicekit.connect(url)`: the kit's own API, spoken by a running voicekit server over its HTTP API.

    kit = voicekit.connect("http://127.0.0.1:7860")   # or VOICEKIT_URL; api_key= or VOICEKIT_API_KEY
    reply = kit.chat("Hello!")
    for chunk in reply:                                # AudioChunks, streamed as the server speaks
        ...
    print(reply.text, reply.timings)

A notebook on a GPU pod uses the server that already holds the GPU instead of loading a second copy of the
models; `open_kit()` connects when a server answers and loads a local kit otherwise. Replies are the kit's
own `Reply` / `AsyncReply`, fed from the HTTP body as it arrives. What differs from a local kit:
- the audio carries no sentence marks: every chunk has `sentence_index == -1` and `sentence == ""`;
- `say()` / `chat()` send the request at once and return when the first audio is ready (errors raise there);
  `asay()` / `achat()` send it on the first `async for` step, so their errors raise there;
- `say` timings: `ttfa_s` is the server's, `tts_s` the time the client waited for audio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from voicekit.audio import WAV_HEADER_SIZE, pcm16_to_float
from voicekit.chat import HistoryItem, normalize_history
from voicekit.errors import (
    EmptyTextError,
    SettingsError,
    TextTooLongError,
    UnknownVoiceError,
    VoicekitError,
    first_line,
)
from voicekit.kit import AsyncReply, Reply
from voicekit.pipeline import AudioChunk, Timings, TurnState
from voicekit.text import clean_for_speech, split_sentences
from voicekit.tts.base import resolve_voice

log = logging.getLogger("voicekit.client")

DEFAULT_PORT = 7860
UNKNOWN_SENTENCE = -1  # HTTP audio has no sentence marks
_LIVE_HEALTH_KEYS = {"status", "active_requests", "engine_requests", "served"}


# -- errors -----------------------------------------------------------------------------------------


class RemoteError(VoicekitError):
    """The server answered with an error the kit itself has no class for; `status`, `code` say which."""

    status: int | None = None
    code: str | None = None


class AuthenticationError(RemoteError, PermissionError):
    """The server wants an API key or password (401)."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """No voicekit server answers at the URL."""


class InvalidRequestError(RemoteError, ValueError):
    """The server refused the request's arguments (a 400 other than the kit's own input errors)."""


def _error(cls: type[Exception], message: str, **attributes: Any) -> Exception:
    """An instance of `cls` carrying the server's own message (the kit's classes build theirs from arguments)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error


# -- connecting -------------------------------------------------------------------------------------


def connect(url: str | None = None, api_key: str | None = None, *, timeout: float = 300.0) -> RemoteKit:
    """A kit that speaks through the voicekit server at `url` (default: VOICEKIT_URL).

    `api_key` is the server's VOICEKIT_API_KEY or its password (default: VOICEKIT_API_KEY, else the password part
    of VOICEKIT_PASSWORD); `http://user:password@host:port` logs in with HTTP Basic. `timeout` bounds each wait
    for the server (connecting is bounded by 10 s).
    """
    url = url or os.environ.get("VOICEKIT_URL", "").strip()
    if not url:
        raise SettingsError("voicekit.connect() needs a URL, e.g. http://127.0.0.1:7860 (or set VOICEKIT_URL)")
    return RemoteKit(url, api_key, timeout=timeout)


def find_server(timeout: float = 1.0) -> str | None:
    """The URL of a voicekit server answering on this machine (VOICEKIT_PORT, then 7860), or None."""
    ports = [os.environ.get("VOICEKIT_PORT", "").strip(), str(DEFAULT_PORT)]
    for port in dict.fromkeys(port for port in ports if port.isdigit()):
        url = f"http://127.0.0.1:{port}"
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = httpx.get(f"{url}/health", timeout=timeout).json()
            if isinstance(health, dict) and health.get("status") == "ok" and "preset" in health:
                return url
    return None


def open_kit(preset: str | None = None, *, url: str | None = None, api_key: str | None = None,
             **overrides: Any) -> Any:
    """A running voicekit server's kit when there is one, else `voicekit.load(preset, **overrides)`.

    `url` (or VOICEKIT_URL) names the server: it must answer. Without one, a server on this machine
    (127.0.0.1, VOICEKIT_PORT or 7860, as on a RunPod pod) is used when its preset fits `preset` ("auto" and
    None take any); otherwise the models load here. `overrides` apply only to a local load.
    """
    named = url or os.environ.get("VOICEKIT_URL", "").strip()
    if named:
        return connect(named, api_key)
    found = find_server()
    if found:
        remote = connect(found, api_key)
        if preset in (None, "auto") or preset == remote.settings.preset:
            return remote
        log.info("the server at %s runs preset %s, not %s: loading a local kit", found, remote.settings.preset,
                 preset)
        remote.close()
    from voicekit.loader import load

    return load(preset, **overrides)


@dataclass(frozen=True)
class RemoteSettings:
    """What the server says about itself (a local kit's `settings` hold much more)."""

    preset: str
    url: str


def _split_url(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """The URL without credentials or trailing slash, and the HTTP Basic login it carried."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"not an http(s) URL of a voicekit server: {parts.hostname or url!r}")
    login = None
    if parts.username is not None or parts.password is not None:
        login = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")), login


def _default_key() -> str | None:
    password = os.environ.get("VOICEKIT_PASSWORD", "")
    return os.environ.get("VOICEKIT_API_KEY") or (password.split(":", 1)[-1] if password else None)


# -- the kit ----------------------------------------------------------------------------------------


class RemoteKit:
    """The public surface of `voicekit.Kit` (voices, say, chat, ...) over a server's HTTP API."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 300.0) -> None:
        self.url, login = _split_url(url)
        key = api_key or (None if login else _default_key())
        self._had_key = bool(key or login)
        self._options: dict[str, Any] = {
            "base_url": self.url, "auth": login, "timeout": httpx.Timeout(timeout, connect=min(10.0, timeout)),
            "headers": {"Authorization": f"Bearer {key}"} if key else {}}
        self._client = httpx.Client(**self._options)
        try:
            health = self.health()
            if not isinstance(health, dict) or health.get("status") != "ok" or "preset" not in health:
                raise ServerUnavailableError(f"{self.url} answers, but not as a voicekit server (GET /health)")
            info = self._checked(self._send(lambda: self._client.get("/v1/audio/voices"))).json()
        except BaseException:
            self._client.close()
            raise
        self.voices: list[str] = [item["id"] for item in info["data"]]
        self.default_voice: str = info["default"]
        self.sample_rate: int = int(info["sample_rate"])
        self.tags: list[str] = list(info.get("tags", []))
        self.description: dict[str, Any] = {"server": self.url, **{
            name: value for name, value in health.items() if name not in _LIVE_HEALTH_KEYS}}
        self.settings = RemoteSettings(preset=str(health["preset"]), url=self.url)

    def __repr__(self) -> str:
        return f"RemoteKit({self.url!r}, preset={self.settings.preset!r})"

    def health(self) -> dict[str, Any]:
        """The server's live `GET /health` (requests in flight, requests served, ...)."""
        return self._send(lambda: self._client.get("/health")).json()

    def resolve_voice(self, voice: str | None) -> str:
        """Canonical voice name (None: the default); raises UnknownVoiceError listing the voices."""
        return resolve_voice(voice, self.voices, self.default_voice)

    def say(self, text: str, voice: str | None = None) -> Reply:
        """Speak `text` in `voice`; iterate the reply for audio chunks (sync)."""
        turn = self._say_turn(text, voice)
        return Reply(_AudioStream(self, turn), **turn.reply_fields())

    def asay(self, text: str, voice: str | None = None) -> AsyncReply:
        """Speak `text` in `voice`; `async for` the reply for audio chunks."""
        turn = self._say_turn(text, voice)
        return AsyncReply(_AsyncAudioStream(self, turn), **turn.reply_fields())

    def chat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
             mode: str | None = None, **options: Any) -> Reply:
        """Reply to `message` with the server's chat model and speak it (sync). Options: system_prompt,
        temperature, max_tokens, seed."""
        turn = self._chat_turn(message, voice, history, mode, options)
        return Reply(_AudioStream(self, turn), **turn.reply_fields())

    def achat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
              mode: str | None = None, **options: Any) -> AsyncReply:
        """Reply to `message` and speak it; `async for` the reply for audio chunks."""
        turn = self._chat_turn(message, voice, history, mode, options)
        return AsyncReply(_AsyncAudioStream(self, turn), **turn.reply_fields())

    def close(self) -> None:
        """Close the HTTP connections (the server and its models keep running)."""
        self._client.close()

    def __enter__(self) -> RemoteKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------

    def _say_turn(self, text: str, voice: str | None) -> _Turn:
        sentences = split_sentences(clean_for_speech(text, keep_tags=bool(self.tags))) if isinstance(text, str) else []
        body = {"model": "voicekit", "input": text, "voice": voice, "response_format": "pcm"}
        return _Turn(self, "/v1/audio/speech", body, sentences=sentences)

    def _chat_turn(self, message: str, voice: str | None, history: Iterable[HistoryItem] | None,
                   mode: str | None, options: dict[str, Any]) -> _Turn:
        past = [{"role": m.role, "content": m.content} for m in normalize_history(history)]
        body = {"message": message, "voice": voice, "history": past, **({"mode": mode} if mode else {}), **options}
        return _Turn(self, "/chat", body, message=message.strip() if isinstance(message, str) else message,
                     history=past)

    def _send(self, call: Any) -> Any:
        """Run an httpx call; an unreachable server or a timeout becomes one clear line naming the URL."""
        try:
            return call()
        except httpx.TransportError as error:
            raise self.unavailable(error) from None

    def unavailable(self, error: httpx.TransportError) -> ServerUnavailableError:
        """The kit's error for a server that cannot be reached or did not answer in time."""
        if isinstance(error, httpx.TimeoutException):
            return ServerUnavailableError(f"the voicekit server at {self.url} did not answer in time")
        return ServerUnavailableError(f"cannot reach the voicekit server at {self.url}: {first_line(error)}")

    def _checked(self, response: httpx.Response, voice: str | None = None) -> httpx.Response:
        """`response` when it is a success, else the kit's error for it (the body must be read)."""
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            message, code = str(error["message"]), error.get("code")
        except (ValueError, KeyError, TypeError):
            message, code = f"HTTP {response.status_code}: {first_line(Exception(response.text))}", None
        status = response.status_code
        if status == 401:
            hint = ("the key or password was refused" if self._had_key
                    else "pass api_key= (its VOICEKIT_API_KEY or password) or set VOICEKIT_API_KEY")
            raise _error(AuthenticationError, f"the voicekit server at {self.url} needs credentials: {hint}",
                         status=status, code=code)
        if code == "unknown_voice":
            raise _error(UnknownVoiceError, message, voice=(voice or "").strip(), voices=list(self.voices))
        if code == "empty_input":
            raise _error(EmptyTextError, message)
        if code == "input_too_long":
            numbers = [int(n) for n in re.findall(r"\d+", message)[:2]] + [0, 0]
            raise _error(TextTooLongError, message, length=numbers[0], limit=numbers[1])
        cls = InvalidRequestError if 400 <= status < 500 else RemoteError
        raise _error(cls, f"the voicekit server at {self.url} answered {status}: {message}", status=status, code=code)


# -- one call ---------------------------------------------------------------------------------------


class _Turn:
    """One say/chat call: its request, the decoder of its audio body, and the reply state it fills in."""

    def __init__(self, kit: RemoteKit, route: str, body: dict[str, Any], *, sentences: list[str] | None = None,
                 message: str | None = None, history: list[dict[str, str]] | None = None) -> None:
        self.kit, self.route, self.body = kit, route, body
        self.sentences, self.message, self.history = sentences, message, history
        self.state = TurnState()
        self.request_id = ""
        self.header_left = WAV_HEADER_SIZE if route == "/chat" else 0  # /chat streams a WAV, say raw PCM
        self.pending = b""
        self.waited = 0.0  # seconds spent waiting for audio (say's tts_s)
        self.server_ttfa: float | None = None

    def reply_fields(self) -> dict[str, Any]:
        return {"state": self.state, "sample_rate": self.kit.sample_rate, "message": self.message,
                "history": self.history}

    def opened(self, response: httpx.Response) -> None:
        """Check the response's status and headers and take what they already tell."""
        self.kit._checked(response, self.body.get("voice"))
        rate = int(response.headers.get("x-sample-rate", self.kit.sample_rate))
        if rate != self.kit.sample_rate:
            raise RemoteError(f"the server at {self.kit.url} streams {rate} Hz, not the {self.kit.sample_rate} Hz "
                              "it announced: reconnect")
        self.request_id = response.headers.get("x-request-id", "")
        ttfa = response.headers.get("x-time-to-first-audio")
        self.server_ttfa = float(ttfa) if ttfa else None
        if self.sentences is not None:
            self.state.text = " ".join(self.sentences)
        elif "x-reply-text" in response.headers:  # sequential chat: the text was final before the first audio
            self.state.text = unquote(response.headers["x-reply-text"])

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
        self.state.timings.audio_s += len(samples) / self.kit.sample_rate
        return AudioChunk(samples, self.kit.sample_rate, UNKNOWN_SENTENCE, "")

    def finish(self, result: dict[str, Any] | None) -> None:
        """Fill in the state at the end of the audio: the server's record of a chat, else what the client saw."""
        state, timings = self.state, self.state.timings
        if result is not None:
            state.text, state.sentences = result["text"], list(result["sentences"])
            known = {field.name for field in fields(Timings)}
            state.timings = Timings(**{name: value for name, value in result["timings"].items() if name in known})
        else:
            state.sentences = list(self.sentences or [])
            timings.ttfa_s, timings.tts_s = self.server_ttfa, self.waited
            timings.total_s, timings.sentences = state.elapsed(), len(state.sentences)
        state.done = True


class _AudioStream(Iterator[AudioChunk]):
    """A call's audio for sync code; the request is sent (and its errors raised) when this is made."""

    def __init__(self, kit: RemoteKit, turn: _Turn) -> None:
        self._kit, self._turn = kit, turn
        client = kit._client
        request = client.build_request("POST", turn.route, json=turn.body)
        self._response = kit._send(lambda: client.send(request, stream=True))
        try:
            if not self._response.is_success:
                self._response.read()
            turn.opened(self._response)
        except BaseException:
            self._response.close()
            raise
        turn.waited = turn.state.elapsed()
        self._pieces = self._response.iter_bytes()
        self._ended = False

    def __next__(self) -> AudioChunk:
        while not self._ended:
            began = time.perf_counter()
            try:
                piece = self._kit._send(lambda: next(self._pieces))
            except StopIteration:
                self.close()
                self._turn.finish(self._result())
                break
            except BaseException:
                self.close()
                raise
            finally:
                self._turn.waited += time.perf_counter() - began
            chunk = self._turn.decode(piece)
            if chunk is not None:
                return chunk
        raise StopIteration

    def _result(self) -> dict[str, Any] | None:
        if self._turn.route != "/chat":
            return None
        response = self._kit._send(lambda: self._kit._client.get(f"/chat/{self._turn.request_id}"))
        return response.json() if response.is_success else None

    def close(self) -> None:
        """Hang up: the server stops the request and aborts its engine work."""
        self._ended = True
        self._response.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._response.close()


class _AsyncAudioStream(AsyncIterator[AudioChunk]):
    """A call's audio for async code, on a client of the running loop; the request goes out on the first step."""

    def __init__(self, kit: RemoteKit, turn: _Turn) -> None:
        self._kit, self._turn = kit, turn
        self._client: httpx.AsyncClient | None = None
        self._response: httpx.Response | None = None
        self._pieces: AsyncIterator[bytes] | None = None
        self._ended = False

    async def _open(self) -> AsyncIterator[bytes]:
        self._client = httpx.AsyncClient(**self._kit._options)
        request = self._client.build_request("POST", self._turn.route, json=self._turn.body)
        self._turn.state.restart()
        self._response = await self._client.send(request, stream=True)  # errors: see _awaited
        if not self._response.is_success:
            await self._response.aread()
        self._turn.opened(self._response)
        self._turn.waited = self._turn.state.elapsed()
        return self._response.aiter_bytes()

    async def __anext__(self) -> AudioChunk:
        while not self._ended:
            began = time.perf_counter()
            try:
                self._pieces = self._pieces or await self._awaited(self._open())
                piece = await self._awaited(anext(self._pieces))
            except StopAsyncIteration:
                result = None
                if self._turn.route == "/chat":
                    response = await self._awaited(self._client.get(f"/chat/{self._turn.request_id}"))  # type: ignore
                    result = response.json() if response.is_success else None
                await self.aclose()
                self._turn.finish(result)
                break
            except BaseException:
                await self.aclose()
                raise
            finally:
                self._turn.waited += time.perf_counter() - began
            chunk = self._turn.decode(piece)
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
