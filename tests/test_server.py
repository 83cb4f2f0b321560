"""The HTTP API over real HTTP: a uvicorn server on 127.0.0.1 in a background thread, the real cpu kit.

Streaming is proven without timing: a gate held inside the speech backend (or the chat engine) stops the
reply after its first chunk, and the client must still receive audio while the server-side reply is
not done. Disconnects are checked the same way: nothing may stay running once the client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import httpx
import openai
import pytest
from stand_in import send_json, serve

from voicekit.audio import read_wav
from voicekit.build import build_transcriber, chat_sampling, planned_recognizer
from voicekit.chat import ChatModel
from voicekit.engines.http_engine import HTTPEngine
from voicekit.engines.llamacpp import LlamaCppEngine
from voicekit.engines.loop import EventLoopThread
from voicekit.kit import Kit
from voicekit.pipeline import Pipeline
from voicekit.placement import bundled_chat_model_path
from voicekit.serve import BackgroundServer, compose
from voicekit.serve.api import create_app
from voicekit.serve.audio import ensure_ffmpeg
from voicekit.settings import Settings
from voicekit.tts.orpheus import OrpheusBackend

pytestmark = pytest.mark.slow

SPEECH = "Hello there. This is voicekit speaking."
FOUR_SENTENCES = "The first sentence is here. Then comes a second one. A third follows it. And this is the last."


@pytest.fixture(scope="module")
def server(kit: Any) -> Iterator[BackgroundServer]:
    ensure_ffmpeg()
    with BackgroundServer(compose(kit)) as running:
        yield running


@pytest.fixture
def state(server: BackgroundServer) -> Any:
    """The server's bookkeeping (requests in flight), read directly: the server runs in this process."""
    return server.app.state.voicekit


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Gate:
    """Holds a patched async stream after its first item until released; records what happened."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.closed_early = False

    def wrap(self, make_stream: Callable[..., AsyncIterator[Any]], label: Callable[..., str]) -> Callable[..., Any]:
        async def gated(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            self.started.append(label(*args, **kwargs))
            stream = make_stream(*args, **kwargs)
            finished = False
            try:
                async for item in stream:
                    yield item
                    while not self.release.is_set():  # cancellable wait on the kit's loop
                        await asyncio.sleep(0.02)
                finished = True
            finally:
                self.closed_early = self.closed_early or not finished
                await stream.aclose()

        return gated


@pytest.fixture
def tts_gate(kit: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(kit.tts, "synthesize", gate.wrap(kit.tts.synthesize, lambda text, voice: text))
    yield gate
    gate.release.set()


def no_work_left(kit: Any, state: Any) -> bool:
    return not state.active and not kit.chat_model.engine.active_requests()


def test_health_voices_and_models(server: BackgroundServer, kit: Any) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["preset"] == "cpu"
    assert health["active_requests"] == 0 and health["engine_requests"] == 0
    voices = httpx.get(f"{server.url}/v1/audio/voices").json()
    assert [item["id"] for item in voices["data"]] == kit.voices
    assert voices["default"] == kit.default_voice and voices["sample_rate"] == kit.sample_rate
    assert "tts-1" in [item["id"] for item in httpx.get(f"{server.url}/v1/models").json()["data"]]


def test_openai_client_gets_a_valid_wav(server: BackgroundServer, kit: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0)
    audio = client.audio.speech.create(model="tts-1", voice=kit.default_voice, input=SPEECH, response_format="wav")
    samples, rate = read_wav(audio.content)
    assert rate == kit.sample_rate
    assert 1.0 < len(samples) / rate < 8.0
    assert abs(samples).max() > 0.05

    with client.audio.speech.with_streaming_response.create(
        model="any-name", voice={"id": kit.default_voice}, input=SPEECH, response_format="wav",
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert int(response.headers["x-sample-rate"]) == kit.sample_rate
        assert response.headers["x-request-id"]
        pieces = list(response.iter_bytes())
    assert pieces[0].startswith(b"RIFF")
    streamed, streamed_rate = read_wav(b"".join(pieces))
    assert streamed_rate == rate and 1.0 < len(streamed) / rate < 8.0  # Piper's durations vary run to run


def _decode(data: bytes, rate: int) -> float:
    """Seconds of audio ffmpeg decodes from `data`."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(rate),
                          "pipe:1"], input=data, capture_output=True, check=True).stdout
    return len(pcm) / 2 / rate


@pytest.mark.parametrize(("fmt", "magic"), [("pcm", None), ("mp3", None), ("opus", b"OggS"), ("aac", b"\xff"),
                                            ("flac", b"fLaC")])
def test_speech_formats(server: BackgroundServer, kit: Any, fmt: str, magic: bytes | None) -> None:
    response = httpx.post(f"{server.url}/v1/audio/speech", timeout=60,
                          json={"model": "tts-1", "input": SPEECH, "voice": kit.default_voice, "response_format": fmt})
    assert response.status_code == 200, response.text
    assert int(response.headers["x-sample-rate"]) == kit.sample_rate
    data = response.content
    if magic:
        assert data.startswith(magic)
    if fmt == "pcm":  # raw 16-bit mono at kit.sample_rate
        assert response.headers["content-type"] == "audio/pcm" and len(data) % 2 == 0
        seconds = len(data) / 2 / kit.sample_rate
    else:
        seconds = _decode(data, kit.sample_rate)
    assert 1.0 < seconds < 8.0


def test_chat_streams_first_audio_before_the_reply_is_done(server: BackgroundServer, kit: Any, state: Any,
                                                           tts_gate: Gate) -> None:
    body = {"message": "Say hello to Sam.", "voice": kit.default_voice, "max_tokens": 40, "seed": 3,
            "history": [{"role": "user", "content": "My name is Sam."}, {"role": "assistant", "content": "Hi Sam!"}]}
    with httpx.stream("POST", f"{server.url}/chat", json=body, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        record = state.active[response.headers["x-request-id"]]
        received = b""
        parts = response.iter_bytes()
        while len(received) <= 44 + 1000:  # the streaming header, then real audio
            received += next(parts)
        # The speech backend is held after its first chunk: the reply cannot be finished yet.
        assert not record.reply.done
        assert len(tts_gate.started) == 1
        tts_gate.release.set()
        received += b"".join(parts)
    samples, rate = read_wav(received)
    assert rate == kit.sample_rate
    assert abs(len(samples) / rate - record.reply.timings.audio_s) < 0.05
    assert record.reply.text and record.outcome == "done"
    # Sequential mode: the text was final before the first audio, so it came in a header too.
    assert unquote(response.headers["x-reply-text"]) == record.reply.text
    wait_until(lambda: no_work_left(kit, state), what="the request to finish")
    result = httpx.get(f"{server.url}/chat/{record.id}").json()
    assert result["done"] and result["text"] == record.reply.text and result["outcome"] == "done"
    assert [m["role"] for m in result["history"]] == ["user", "assistant", "user", "assistant"]
    assert result["timings"]["ttfa_s"] > 0 and result["timings"]["llm_s"] > 0
    assert httpx.get(f"{server.url}/chat/unknown").status_code == 404


def ffmpeg_children() -> list[int]:
    """Ids of ffmpeg processes started by this process (the server runs in it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if "ffmpeg" in fields[0] and int(fields[1].split()[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_disconnect_mid_stream_stops_the_reply(server: BackgroundServer, kit: Any, state: Any, tts_gate: Gate,
                                               fmt: str) -> None:
    body = {"model": "tts-1", "input": FOUR_SENTENCES, "voice": kit.default_voice, "response_format": fmt}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=60) as response:
        record = state.active[response.headers["x-request-id"]]
        first = next(response.iter_bytes())
        assert first.startswith(b"RIFF" if fmt == "wav" else b"ID3")
    # The client closed the connection while the reply was held after its first chunk.
    wait_until(lambda: not state.active, what="the server to drop the request")
    assert record.outcome == "disconnected"
    # The speech stream is closed on the kit's loop, after the server has dropped the request (the
    # disconnect cancels the server task, which cannot wait for that cleanup): wait for it, bounded.
    wait_until(lambda: tts_gate.closed_early, what="the speech stream to be closed early")
    assert len(tts_gate.started) < 4
    wait_until(lambda: no_work_left(kit, state), what="no engine request left running")
    if Path("/proc/self/stat").exists():
        wait_until(lambda: not ffmpeg_children(), what="the mp3 encoder to stop")
    tts_gate.release.set()
    assert httpx.get(f"{server.url}/health").json()["active_requests"] == 0
    again = httpx.post(f"{server.url}/v1/audio/speech", json={**body, "input": "Still here."}, timeout=60)
    assert again.status_code == 200 and len(again.content) > 1000


def test_disconnect_before_first_audio_aborts_the_chat_engine(server: BackgroundServer, kit: Any, state: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    engine = kit.chat_model.engine
    monkeypatch.setattr(engine, "generate", gate.wrap(engine.generate, lambda *args, **kwargs: "chat"))
    body = json.dumps({"message": "Tell me a long story about a dragon.", "voice": kit.default_voice}).encode()
    request = (f"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        with socket.create_connection((server.host, server.port), timeout=30) as client:
            client.sendall(request)
            # The engine has produced one delta and is held: a real llama.cpp request is in flight.
            wait_until(lambda: bool(engine.active_requests()) and bool(gate.started), what="the engine to start")
            assert len(state.active) == 1
        wait_until(lambda: no_work_left(kit, state), what="the engine request to be aborted")
        assert gate.closed_early
    finally:
        gate.release.set()
    health = httpx.get(f"{server.url}/health").json()
    assert health.pop("recognizer")["model"] == "tiny.en" and health.pop("vllm_engines") == []
    assert health.pop("gpu") is None  # no GPU here
    assert health.pop("machine")["gpu"] is None and health.pop("capacity")["streams"] == 2
    assert health | {"served": 0, "admission": {}, "rss_mb": 0} == {
        "status": "ok", "warnings": [], "preset": "cpu", "active_requests": 0, "engine_requests": 0, "served": 0,
        "admission": {}, "rss_mb": 0}
    assert health["admission"]["running"] == health["admission"]["waiting"] == 0, "the slot was given back"


def test_concurrent_requests(server: BackgroundServer, kit: Any, state: Any) -> None:
    async def one(client: httpx.AsyncClient, text: str) -> tuple[int, float]:
        response = await client.post(f"{server.url}/v1/audio/speech", timeout=120,
                                     json={"input": text, "voice": kit.default_voice, "response_format": "wav"})
        samples, rate = read_wav(response.content)
        return response.status_code, len(samples) / rate

    async def many() -> list[tuple[int, float]]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(one(client, f"Request number {n} is here.") for n in range(4)))

    results = asyncio.run(many())
    assert all(status == 200 and seconds > 0.5 for status, seconds in results)
    wait_until(lambda: no_work_left(kit, state), what="all requests to finish")


BAD_REQUESTS = [
    # (route, body (dict, or str sent raw), param, code, text in the message)
    ("/v1/audio/speech", {"input": "   ", "voice": None}, "input", "empty_input", "empty"),
    ("/v1/audio/speech", {"input": "word " * 500}, "input", "input_too_long", "2000"),
    ("/v1/audio/speech", {"input": "Hi.", "voice": "alloy"}, "voice", "unknown_voice", "en_US-joe-medium"),
    ("/v1/audio/speech", '{"input": "Hi", ', None, "invalid_json", "JSON"),
    ("/v1/audio/speech", "[1, 2]", None, "invalid_json", "JSON object"),
    ("/v1/audio/speech", {"voice": "joe"}, "input", "missing_required_parameter", "input"),
    ("/v1/audio/speech", {"input": 5}, "input", "invalid_value", "string"),
    ("/v1/audio/speech", {"input": "Hi.", "response_format": "ogg"}, "response_format", "unsupported_format", "wav"),
    ("/v1/audio/speech", {"input": "Hi.", "speed": 1.5}, "speed", "unsupported_value", "1.0"),
    ("/v1/audio/speech", {"input": "Hi.", "instructions": "whisper"}, "instructions", "unsupported_value", ""),
    ("/v1/audio/speech", {"input": "Hi.", "stream_format": "sse"}, "stream_format", "unsupported_value", "audio"),
    ("/v1/audio/speech", {"input": "Hi.", "colour": "red"}, "colour", "unknown_parameter", "colour"),
    ("/chat", {"message": ""}, "message", "empty_input", "empty"),
    ("/chat", {"message": "x" * 2001}, "message", "input_too_long", "limit"),
    ("/chat", {"message": "Hi", "voice": "tara"}, "voice", "unknown_voice", "available voices"),
    ("/chat", {"message": "Hi", "mode": "fast"}, "mode", "invalid_value", "overlap"),
    ("/chat", "not json", None, "invalid_json", "JSON"),
]


@pytest.mark.parametrize(("route", "body", "param", "code", "text"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(server: BackgroundServer, route: str, body: Any, param: str | None,
                                        code: str, text: str) -> None:
    if isinstance(body, str):
        response = httpx.post(server.url + route, content=body, headers={"Content-Type": "application/json"})
    else:
        response = httpx.post(server.url + route, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert text in error["message"] and "\n" not in error["message"]


def test_unknown_v1_route_is_an_openai_404(server: BackgroundServer) -> None:
    response = httpx.get(f"{server.url}/v1/audio/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_api_key_is_required_when_configured(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-test-do-not-log"
    with caplog.at_level(logging.INFO, logger="voicekit"), BackgroundServer(create_app(kit, api_key=key)) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
            response = httpx.post(f"{api.url}/v1/audio/speech", json={"input": "Hi."}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{api.url}/health").status_code == 200  # health checks stay open
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=kit.default_voice, input="Good key.", response_format="wav",
        ) as response:
            rid = response.headers["x-request-id"]
            audio = response.read()
        assert read_wav(audio)[0].size > 0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{api.url}/v1", api_key="bad", max_retries=0).audio.speech.create(
                model="tts-1", voice=kit.default_voice, input="Bad key.")
        wait_until(lambda: any(rid in r.getMessage() and "ttfa_s" in r.getMessage() for r in caplog.records),
                   what="the finished-request log line")
    assert not any(key in record.getMessage() for record in caplog.records)


# -- /health when an engine is dead ------------------------------------------------------------------


class VLLMHealthStandIn(BaseHTTPRequestHandler):
    """`vllm serve`'s health route (200 while its engine runs, 503 once it died): no vLLM server can run here."""

    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        send_json(self, self.status if self.path == "/health" else 404, {})

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def kit_over(engine: Any, tts: Any) -> Iterator[Kit]:
    """A kit with `engine` as its chat engine and `tts` as its speech backend; closes the engine, not `tts`."""
    loop = EventLoopThread()
    settings = Settings.resolve("cpu")
    chat = ChatModel(engine, settings.system_prompt, chat_sampling(settings))
    try:
        yield Kit(settings, Pipeline(tts, chat), loop, description={"preset": "cpu"},
                  recognizer=lambda: build_transcriber(settings), recognizer_plan=planned_recognizer(settings))
    finally:
        loop.run(engine.close(), timeout=30)
        loop.close()


def test_health_is_503_with_the_reason_when_the_chat_server_dies(kit: Any) -> None:
    stand_in, url = serve(VLLMHealthStandIn)
    VLLMHealthStandIn.status, VLLMHealthStandIn.paths = 200, []
    with kit_over(HTTPEngine(url, "stand-in"), kit.tts) as http_kit, \
            BackgroundServer(create_app(http_kit, api_key="sk-health")) as api:
        healthy = httpx.get(f"{api.url}/health")  # no credentials: health checks stay open
        assert healthy.status_code == 200 and healthy.json()["status"] == "ok" and "reason" not in healthy.json()
        assert VLLMHealthStandIn.paths == ["/health", "/workers"], "its health, and once whether it is a router"

        VLLMHealthStandIn.status = 503  # vLLM's engine core died; the server process still answers
        dead = httpx.get(f"{api.url}/health")
        assert dead.status_code == 503
        body = dead.json()
        assert body.pop("admission")["running"] == 0 and body.pop("rss_mb") > 0
        assert body.pop("recognizer")["device"] == "cpu" and body.pop("vllm_engines") == [] and "gpu" in body
        assert body.pop("capacity")["source"] == "preset" and body.pop("machine")["cpu_count"] == os.cpu_count()
        body.pop("gpu")
        assert body == {"status": "error", "reason": f"chat model: the server at {url} answered GET /health with 503",
                        "warnings": [], "preset": "cpu", "active_requests": 0, "engine_requests": 0, "served": 0}

        stand_in.shutdown()
        stand_in.server_close()  # the whole server is gone: nothing listens on its port any more
        gone = httpx.get(f"{api.url}/health")
        assert gone.status_code == 503 and gone.json()["status"] == "error"
        assert gone.json()["reason"].startswith(f"chat model: cannot reach the server at {url}/health (ConnectError")
        assert "\n" not in gone.json()["reason"]


def test_health_names_a_dead_speech_engine(kit: Any, random_snac: Any) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    orpheus = OrpheusBackend(HTTPEngine(dead_url, "orpheus"), lambda text: [1, 2], random_snac)
    with kit_over(LlamaCppEngine(bundled_chat_model_path()), orpheus) as speech_kit, \
            BackgroundServer(create_app(speech_kit)) as api:
        response = httpx.get(f"{api.url}/health")
        assert response.status_code == 503
        assert response.json()["reason"].startswith(f"speech model: cannot reach the server at {dead_url}/health")
        speech_kit.loop.run(orpheus.close())


def test_health_is_503_once_the_chat_engine_is_closed(kit: Any) -> None:
    engine = LlamaCppEngine(bundled_chat_model_path())
    with kit_over(engine, kit.tts) as llama_kit, BackgroundServer(create_app(llama_kit)) as api:
        assert httpx.get(f"{api.url}/health").status_code == 200
        llama_kit.loop.run(engine.close())
        response = httpx.get(f"{api.url}/health")
        assert response.status_code == 503
        assert response.json()["reason"] == ("chat model: the llamacpp engine for SmolLM2-135M-Instruct.Q4_1.gguf "
                                             "is closed")
        assert llama_kit.health() == response.json()["reason"]
    assert kit.health() is None, "the shared kit is untouched"
