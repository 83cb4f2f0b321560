"""Admission control over real HTTP: a bounded number of requests running and waiting, 429 with Retry-After past
them, and a per-request time limit, on the real cpu kit (uvicorn on 127.0.0.1, the same process).

The speech backend is held after its first chunk (test_server's Gate), so "running" is a real request that
streams real audio and waits; nothing here depends on timing but the time limit itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
import test_server
from test_server import Gate, no_work_left, wait_until

from voicekit.audio import read_wav
from voicekit.listening.asr import Transcript
from voicekit.serve import BackgroundServer
from voicekit.serve.admission import Admission, Busy, Limits
from voicekit.serve.api import create_app

pytestmark = pytest.mark.slow

tts_gate = test_server.tts_gate  # the fixture, shared
SPEECH = {"model": "tts-1", "input": "The first sentence is here. Then comes a second one.",
          "response_format": "wav"}


@pytest.fixture
def tight(kit: Any) -> Iterator[BackgroundServer]:
    """One running slot and one place in line."""
    with BackgroundServer(create_app(kit, limits=Limits(running=1, waiting=1, timeout_s=60, wait_s=30))) as server:
        yield server


def stream_in_background(url: str, results: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        response = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, timeout=120)
        results[key] = response

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_past_the_running_and_waiting_requests_a_client_gets_429_with_retry_after(
        tight: BackgroundServer, kit: Any, tts_gate: Gate) -> None:
    state = tight.app.state.voicekit
    results: dict[str, Any] = {}
    first = stream_in_background(tight.url, results, "first")
    wait_until(lambda: state.admission.running == 1 and tts_gate.started, what="the first request to run")
    second = stream_in_background(tight.url, results, "second")
    wait_until(lambda: state.admission.waiting == 1, what="the second request to wait in line")

    busy = httpx.post(f"{tight.url}/v1/audio/speech", json=SPEECH, timeout=30)
    assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
    error = busy.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "server_busy")
    assert "1 requests running and 1 waiting (at most 1 and 1)" in error["message"]
    client = openai.OpenAI(base_url=f"{tight.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError, match="the server is busy"):
        client.audio.speech.create(model="tts-1", voice=kit.default_voice, input="Hello.", response_format="wav")
    health = httpx.get(f"{tight.url}/health").json()["admission"]
    assert health | {"request_timeout_s": 0, "mean_request_s": 0} == {
        "running": 1, "waiting": 1, "max_running": 1, "max_waiting": 1, "turned_away": 2, "request_timeout_s": 0,
        "mean_request_s": 0}

    tts_gate.release.set()
    first.join(60)
    second.join(60)
    for key in ("first", "second"):
        samples, rate = read_wav(results[key].content)
        assert results[key].status_code == 200 and len(samples) / rate > 1.0, key
    wait_until(lambda: no_work_left(kit, state) and state.admission.running == 0, what="the slots to be free")
    assert httpx.post(f"{tight.url}/v1/audio/speech", json=SPEECH, timeout=60).status_code == 200


def test_a_request_past_its_time_limit_is_stopped_and_frees_its_slot(kit: Any, tts_gate: Gate) -> None:
    limits = Limits(running=1, waiting=0, timeout_s=1.5)
    with BackgroundServer(create_app(kit, limits=limits)) as server:
        state = server.app.state.voicekit
        response = httpx.post(f"{server.url}/v1/audio/speech", json=SPEECH, timeout=60)  # held after 1 chunk
        assert response.status_code == 200
        samples, rate = read_wav(response.content)
        assert 0 < len(samples) / rate < 3.0, "the stream ended at the limit, after the first sentence's audio"
        record = next(iter(state.finished.values()))
        assert record.outcome == "timeout"
        wait_until(lambda: no_work_left(kit, state) and tts_gate.closed_early, what="the reply to be stopped")
        assert state.admission.running == 0


def test_no_audio_within_the_limit_is_a_504(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    engine = kit.chat_model.engine
    monkeypatch.setattr(engine, "generate", gate.wrap(engine.generate, lambda *args, **kwargs: "chat"))
    with BackgroundServer(create_app(kit, limits=Limits(running=1, waiting=0, timeout_s=1.0))) as server:
        try:
            response = httpx.post(f"{server.url}/chat", json={"message": "Tell me a long story."}, timeout=60)
            assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
            wait_until(lambda: no_work_left(kit, server.app.state.voicekit), what="the engine request to end")
        finally:
            gate.release.set()


def test_admission_counts(kit: Any) -> None:
    import asyncio

    async def scenario() -> tuple[int, int, str]:
        admission = Admission(Limits(running=1, waiting=1, wait_s=0.2))
        await admission.enter()
        waiter = asyncio.ensure_future(admission.enter())
        await asyncio.sleep(0.01)
        try:
            await admission.enter()
        except Busy as busy:
            message = str(busy)
        await asyncio.sleep(0.3)  # the waiter gives up after wait_s: turned away too
        assert isinstance(waiter.exception(), Busy)
        return admission.running, admission.turned_away, message

    running, turned_away, message = asyncio.run(scenario())
    assert (running, turned_away) == (1, 2) and message.startswith("the server is busy: 1 requests running and 1")
    assert Limits.for_preset("gpu") == Limits(16, 32) and Limits.for_preset("cpu", running=3).running == 3


def test_a_burst_in_one_tick_is_held_to_the_running_and_waiting_slots() -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        admission = Admission(Limits(running=2, waiting=2, wait_s=0.2))
        entries = [asyncio.ensure_future(admission.enter()) for _ in range(10)]  # all start in the same tick
        await asyncio.sleep(0.05)
        running, waiting = admission.running, admission.waiting
        await asyncio.gather(*entries, return_exceptions=True)
        retry_afters = [entry.exception().retry_after for entry in entries if entry.exception() is not None]
        return running, waiting, retry_afters

    running, waiting, retry_afters = asyncio.run(scenario())
    assert (running, waiting) == (2, 2)
    assert len(retry_afters) == 8, "6 turned away at once, then the 2 in line after wait_s"
    assert max(retry_afters) <= 8, "mean 5 s x (2 waiting + 1) / 2 running"


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")
def test_the_page_shares_the_limits_and_says_busy(kit: Any, tts_gate: Gate) -> None:
    from gradio_client import Client

    from voicekit.serve import compose

    with BackgroundServer(compose(kit, limits=Limits(running=1, waiting=0, timeout_s=60))) as server:
        state = server.app.state.voicekit
        results: dict[str, Any] = {}
        held = stream_in_background(server.url, results, "api")  # the API request takes the one slot
        wait_until(lambda: state.admission.running == 1, what="the API request to run")
        client = Client(server.url + "/", verbose=False, download_files=False)
        try:
            with pytest.raises(Exception, match=r"Busy, try again in [0-9]+ s: the server is busy"):
                client.predict("Hello there.", kit.default_voice, api_name="/speak")
        finally:
            client.close()
            tts_gate.release.set()
            held.join(60)
        assert results["api"].status_code == 200 and state.admission.turned_away == 1


class HeldRecognizer:
    """A kit whose recognizer holds every transcription until `release` is set: no model needed."""

    settings = SimpleNamespace(preset="cpu")

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def atranscribe(self, data: bytes, **options: Any) -> Transcript:
        await self.release.wait()
        return Transcript("held", "en", 1.0, (), 0.01)


async def test_transcriptions_take_the_servers_running_slots() -> None:
    kit = HeldRecognizer()
    app = create_app(kit, limits=Limits(running=1, waiting=0, timeout_s=60))  # type: ignore[arg-type]
    admission = app.state.voicekit.admission
    url, files = "/v1/audio/transcriptions", {"file": ("a.wav", b"RIFF and some bytes")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://voicekit") as client:
        first = asyncio.create_task(client.post(url, files=files))
        for _ in range(500):
            if admission.running:
                break
            await asyncio.sleep(0.01)
        assert admission.running == 1, "the first transcription holds the one running slot"
        busy = await client.post(url, files=files)
        assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
        error = busy.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "server_busy"
        assert "1 requests running and 0 waiting" in error["message"]
        kit.release.set()
        done = await first
        assert done.status_code == 200 and done.json() == {"text": "held"}
    assert admission.as_dict()["running"] == 0 and admission.turned_away == 1
