"""`voicekit.connect(url)`: the kit's own API, spoken by a running voicekit server over its HTTP API.

    kit = voicekit.connect("http://127.0.0.1:7860")   # or VOICEKIT_URL; api_key= or VOICEKIT_API_KEY
    reply = kit.chat("Hello!")
    for chunk in reply:                                # AudioChunks, streamed as the server speaks
        ...
    print(reply.text, reply.timings)

A notebook on a GPU pod uses the server that already holds the GPU instead of loading a second copy of the
models; `open_kit()` connects when a server answers and loads a local kit otherwise. Replies are the kit's
own `Reply` / `AsyncReply`, fed from the server's event stream (`POST /v1/chat/events`,
`POST /v1/audio/speech/events`; voicekit/client_stream.py) as it arrives: the chunks carry their pieces, the turn
its text, sentences, pieces and the server's timings, as a local kit's do. What differs from a local kit:
- `say()` / `chat()` send the request at once and return when the first audio is ready (errors raise there);
  `asay()` / `achat()` send it on the first `async for` step, so their errors raise there;
- the text arrives between chunks, so it may lag the server's by one chunk until the reply is done.
`realtime()` / `arealtime()` talk over the server's `WS /v1/realtime` (voicekit/client_realtime.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from voicekit.chat import HistoryItem, normalize_history
from voicekit.client_realtime import AsyncRemoteSession, RemoteRealtimeSession
from voicekit.client_stream import EventStream, SyncChunks
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import (
    AudioDecodeError,
    AudioTooLongError,
    AuthenticationError,
    EmptyTextError,
    InvalidRequestError,
    RemoteError,
    ServerUnavailableError,
    SettingsError,
    TextTooLongError,
    UnknownVoiceError,
    UnsupportedLanguageError,
    first_line,
    server_error,
)
from voicekit.kit import AsyncReply, Reply
from voicekit.listening.asr import Segment, Transcript, Word
from voicekit.pipeline import Turn
from voicekit.text import clean_for_speech, split_sentences
from voicekit.tts.base import resolve_voice
from voicekit.tts.catalogue import Voice

log = logging.getLogger("voicekit.client")

DEFAULT_PORT = 7860
_TRANSCRIPTION_ERRORS = {"invalid_audio": AudioDecodeError, "audio_too_long": AudioTooLongError,
                         "unsupported_language": UnsupportedLanguageError}
_LIVE_HEALTH_KEYS = {"status", "reason", "warnings", "active_requests", "engine_requests", "served", "admission",
                     "rss_mb"}


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
    from voicekit.build import load

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
        self._loop: EventLoopThread | None = None  # sync replies and realtime sessions run on it, made on the first
        self._loop_lock = threading.Lock()
        self._sessions: weakref.WeakSet[RemoteRealtimeSession] = weakref.WeakSet()
        try:
            health = self.health()
            if not isinstance(health, dict) or health.get("status") != "ok" or "preset" not in health:
                raise ServerUnavailableError(f"{self.url} answers, but not as a voicekit server (GET /health)")
            info = self._checked(self._send(lambda: self._client.get("/v1/audio/voices"))).json()
        except BaseException:
            self._client.close()
            raise
        self.voices: list[Voice] = [Voice(item["id"], item.get("family", ""), item.get("language", ""),
                                          item.get("description", "")) for item in info["data"]]
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
        return self._sync_reply(self._say_stream(text, voice))

    def asay(self, text: str, voice: str | None = None) -> AsyncReply:
        """Speak `text` in `voice`; `async for` the reply for audio chunks."""
        stream = self._say_stream(text, voice)
        return AsyncReply(stream.turn, stream.chunks(), self.sample_rate)

    def chat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
             mode: str | None = None, **options: Any) -> Reply:
        """Reply to `message` with the server's chat model and speak it (sync). Options: system_prompt,
        temperature, max_tokens, seed."""
        return self._sync_reply(self._chat_stream(message, voice, history, mode, options))

    def achat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
              mode: str | None = None, **options: Any) -> AsyncReply:
        """Reply to `message` and speak it; `async for` the reply for audio chunks."""
        stream = self._chat_stream(message, voice, history, mode, options)
        return AsyncReply(stream.turn, stream.chunks(), self.sample_rate)

    def transcribe(self, audio: Any, sample_rate: int | None = None, language: str | None = None, *,
                   prompt: str | None = None, temperature: float | None = None, words: bool = False) -> Transcript:
        """The words spoken in `audio` (samples with their `sample_rate`, an audio file's path or bytes), heard by
        the server's recognizer (`POST /v1/audio/transcriptions`). `seconds` is the server's processing time;
        `words` True: each word's start and end too (`Transcript.words`)."""
        from voicekit.listening.asr import upload_bytes

        data = upload_bytes(audio, sample_rate)
        fields = {"model": "whisper-1", "response_format": "verbose_json",
                  **{name: str(value) for name, value in (("language", language), ("prompt", prompt),
                                                         ("temperature", temperature)) if value is not None},
                  **({"timestamp_granularities[]": ["segment", "word"]} if words else {})}
        started = time.perf_counter()
        response = self._checked(self._send(lambda: self._client.post(
            "/v1/audio/transcriptions", data=fields, files={"file": ("audio", data, "application/octet-stream")})))
        body = response.json()
        segments = tuple(Segment(float(item["start"]), float(item["end"]), str(item["text"]))
                         for item in body.get("segments", []))
        seconds = float(response.headers.get("X-Processing-Seconds") or time.perf_counter() - started)
        timed = tuple(Word(float(item["start"]), float(item["end"]), str(item["word"]))
                      for item in body.get("words") or [])
        return Transcript(str(body["text"]), str(body.get("language", "")), float(body.get("duration", 0.0)),
                          segments, seconds, timed)

    async def atranscribe(self, audio: Any, sample_rate: int | None = None, language: str | None = None, *,
                          prompt: str | None = None, temperature: float | None = None,
                          words: bool = False) -> Transcript:
        """`transcribe` in a worker thread."""
        return await asyncio.to_thread(self.transcribe, audio, sample_rate, language, prompt=prompt,
                                       temperature=temperature, words=words)

    # -- talking out loud -------------------------------------------------------------------------------

    def realtime(self, voice: str | None = None, instructions: str | None = None,
                 history: list[dict[str, Any]] | None = None) -> RemoteRealtimeSession:
        """A spoken conversation for sync code over the server's `WS /v1/realtime`: feed microphone audio, read
        events, as with a local kit's `realtime()` (voicekit/client_realtime.py). Connects now: a refused session
        raises here."""
        session = RemoteRealtimeSession(self, voice=voice, instructions=instructions, history=history)
        self._sessions.add(session)
        return session

    def arealtime(self, voice: str | None = None, instructions: str | None = None,
                  history: list[dict[str, Any]] | None = None) -> AsyncRemoteSession:
        """A spoken conversation for async code (use it on one loop); it connects on its first awaited call."""
        return AsyncRemoteSession(self, voice=voice, instructions=instructions, history=history)

    def realtime_loop(self) -> EventLoopThread:
        """The loop thread that drives the sync replies and realtime sessions (started on first use), as a local
        kit's loop drives its sync replies."""
        with self._loop_lock:
            self._loop = self._loop or EventLoopThread("voicekit-remote")
            return self._loop

    def socket_url(self) -> str:
        """The server's realtime socket: ws(s)://host:port/v1/realtime."""
        return "ws" + self.url[len("http"):] + "/v1/realtime"

    def socket_headers(self) -> dict[str, str]:
        """The kit's credentials for a WebSocket handshake (the same Authorization as its HTTP requests)."""
        request = self._client.build_request("GET", "/v1/realtime")
        if self._options["auth"] is not None:
            request = next(self._options["auth"].auth_flow(request))
        return {"Authorization": request.headers["authorization"]} if "authorization" in request.headers else {}

    def close(self) -> None:
        """Close the HTTP connections and the realtime sessions (the server and its models keep running)."""
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                session.close()
        if self._loop is not None:
            self._loop.close()
        self._client.close()

    def __enter__(self) -> RemoteKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------

    def _sync_reply(self, stream: EventStream) -> Reply:
        loop = self.realtime_loop()
        loop.run(stream.open())  # errors raise at the call, as a local kit's do
        return Reply(stream.turn, SyncChunks(loop, stream), self.sample_rate)

    def _say_stream(self, text: str, voice: str | None) -> EventStream:
        # the sentences the server will speak, known at the call as a local kit's are (its events confirm them)
        sentences = split_sentences(clean_for_speech(text, keep_tags=bool(self.tags))) if isinstance(text, str) else []
        turn = Turn(voice=voice or self.default_voice, script=sentences, sentences=list(sentences))
        return EventStream(self, "/v1/audio/speech/events", {"input": text, "voice": voice}, turn)

    def _chat_stream(self, message: str, voice: str | None, history: Iterable[HistoryItem] | None,
                     mode: str | None, options: dict[str, Any]) -> EventStream:
        past = normalize_history(history)
        body = {"message": message, "voice": voice, "history": [m.as_dict() for m in past],
                **({"mode": mode} if mode else {}), **options}
        turn = Turn(voice=voice or self.default_voice, message=message.strip() if isinstance(message, str) else "",
                    past=past, mode=mode or "sequential", options=dict(options))  # type: ignore[arg-type]
        return EventStream(self, "/v1/chat/events", body, turn)

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
            raise server_error(AuthenticationError, f"the voicekit server at {self.url} needs credentials: {hint}",
                         status=status, code=code)
        if code == "unknown_voice":
            raise server_error(UnknownVoiceError, message, voice=(voice or "").strip(), voices=list(self.voices))
        if code == "empty_input":
            raise server_error(EmptyTextError, message)
        if code in _TRANSCRIPTION_ERRORS:
            raise server_error(_TRANSCRIPTION_ERRORS[code], message)
        if code == "input_too_long":
            numbers = [int(n) for n in re.findall(r"\d+", message)[:2]] + [0, 0]
            raise server_error(TextTooLongError, message, length=numbers[0], limit=numbers[1])
        cls = InvalidRequestError if 400 <= status < 500 else RemoteError
        raise server_error(cls, f"the voicekit server at {self.url} answered {status}: {message}", status=status,
                           code=code)
