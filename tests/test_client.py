"""`voicekit.connect()`: the kit's API over a real running server (uvicorn on 127.0.0.1, the real cpu kit).

The server runs in this process (app.BackgroundServer), so its bookkeeping can be read directly: that is how
streaming is proven (the speech backend is held after its first chunk while the client already plays it) and
how hang-ups are proven to stop the work behind them. The `state` and `tts_gate` fixtures are test_server's,
here on this module's server (behind an API key).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import test_server
from test_server import Gate, no_work_left, wait_until

import voicekit
from voicekit.client import AuthenticationError, RemoteKit, ServerUnavailableError, find_server
from voicekit.errors import EmptyTextError, TextTooLongError, UnknownVoiceError
from voicekit.serve import BackgroundServer, compose
from voicekit.serve.audio import ensure_ffmpeg

pytestmark = pytest.mark.slow

KEY = "sk-client-test"
FOUR_SENTENCES = "The first sentence is here. Then comes a second one. A third follows it. And this is the last."


@pytest.fixture(scope="module")
def server(kit: Any) -> Iterator[BackgroundServer]:
    ensure_ffmpeg()
    with BackgroundServer(compose(kit, api_key=KEY)) as running:
        yield running


state = test_server.state  # fixtures shared with test_server, on this module's `server`
tts_gate = test_server.tts_gate


@pytest.fixture(scope="module")
def remote(server: BackgroundServer) -> Iterator[RemoteKit]:
    with voicekit.connect(server.url, api_key=KEY) as connected:
        yield connected


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connect_describes_the_servers_kit(remote: RemoteKit, server: BackgroundServer, kit: Any) -> None:
    assert (remote.voices, remote.default_voice, remote.sample_rate) == (kit.voices, kit.default_voice,
                                                                         kit.sample_rate)
    assert remote.tags == list(kit.tags) and remote.settings.preset == "cpu"
    assert remote.description["server"] == server.url and remote.description["preset"] == "cpu"
    assert KEY not in repr(remote) and KEY not in str(remote.description)


def test_say_streams_chunks_while_the_server_is_still_speaking(remote: RemoteKit, kit: Any, state: Any,
                                                               tts_gate: Gate) -> None:
    reply = remote.say(FOUR_SENTENCES)
    stream = iter(reply)
    first = next(stream)
    # The server's speech backend is held after its first chunk, yet the client already has audio.
    assert first.sample_rate == kit.sample_rate and first.samples.dtype == np.float32 and first.samples.size > 0
    assert not reply.done and len(state.active) == 1 and tts_gate.started == ["The first sentence is here."]
    tts_gate.release.set()
    rest = list(stream)
    samples = reply.audio()
    assert reply.done and len(rest) >= 1
    assert samples.size == sum(chunk.samples.size for chunk in [first, *rest])
    assert reply.timings.audio_s == pytest.approx(samples.size / kit.sample_rate)
    assert reply.sentences == ["The first sentence is here.", "Then comes a second one.", "A third follows it.",
                               "And this is the last."]
    local = kit.say(FOUR_SENTENCES).audio()
    assert abs(samples.size - local.size) / kit.sample_rate < 0.5, "the same speech as the kit gives locally"
    assert abs(samples).max() > 0.05
    assert reply.timings.ttfa_s is not None and reply.timings.ttfa_s > 0


def test_chat_gives_text_timings_and_history_for_the_next_turn(remote: RemoteKit, state: Any) -> None:
    first = remote.chat("My name is Ada.", seed=1, max_tokens=24)
    audio = first.audio()
    assert audio.size > 0 and first.done and first.text.strip()
    assert first.sentences and first.timings.ttfa_s > 0 and first.timings.llm_s > 0
    assert first.timings.audio_s == pytest.approx(audio.size / remote.sample_rate, abs=0.05)
    assert first.history == [{"role": "user", "content": "My name is Ada."},
                             {"role": "assistant", "content": first.text}]
    second = remote.chat("What is my name?", history=first.history, seed=2, max_tokens=16, mode="overlap")
    second.audio()
    record = state.find(second._stream._call.request_id)  # the server's own record of the turn
    assert record.reply.history[:2] == first.history and second.text == record.reply.text
    assert [m["role"] for m in second.history] == ["user", "assistant", "user", "assistant"]


def test_async_say_and_chat(remote: RemoteKit, kit: Any) -> None:
    async def talk() -> tuple[int, int, str]:
        said = remote.asay("Hello from the async client.")
        said_samples = sum([chunk.samples.size async for chunk in said])
        reply = remote.achat("Say hi.", seed=4, max_tokens=16)
        replied = await reply.audio()
        return said_samples, replied.size, reply.text

    said, replied, text = asyncio.run(talk())
    assert said / kit.sample_rate > 0.5 and replied > 0 and text.strip()


def test_hanging_up_mid_reply_stops_the_servers_work(remote: RemoteKit, kit: Any, state: Any,
                                                      tts_gate: Gate) -> None:
    reply = remote.say(FOUR_SENTENCES)
    next(iter(reply))
    reply.close()
    wait_until(lambda: not state.active, what="the server to drop the request")
    wait_until(lambda: tts_gate.closed_early, what="the speech stream to be closed early")
    wait_until(lambda: no_work_left(kit, state), what="no engine request left running")
    assert len(tts_gate.started) < 4


def test_bad_input_raises_the_kits_own_errors(remote: RemoteKit, kit: Any) -> None:
    with pytest.raises(UnknownVoiceError) as unknown:
        remote.say("Hello.", voice="nobody")
    assert "nobody" in str(unknown.value) and kit.default_voice in str(unknown.value)
    with pytest.raises(EmptyTextError):
        remote.say("   ")
    with pytest.raises(EmptyTextError):
        remote.chat("")
    with pytest.raises(TextTooLongError, match="2000"):
        remote.say("word " * 1000)


def test_credentials_and_missing_servers_are_clear_errors(server: BackgroundServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEKIT_API_KEY", raising=False)
    monkeypatch.delenv("VOICEKIT_PASSWORD", raising=False)
    with pytest.raises(AuthenticationError, match="needs credentials: pass api_key="):
        voicekit.connect(server.url)
    with pytest.raises(AuthenticationError, match="the key or password was refused") as refused:
        voicekit.connect(server.url, api_key="sk-wrong")
    assert "sk-wrong" not in str(refused.value)
    monkeypatch.setenv("VOICEKIT_API_KEY", KEY)
    assert voicekit.connect(server.url).voices, "VOICEKIT_API_KEY is the default key"
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match=f"cannot reach the voicekit server at {closed}"):
        voicekit.connect(closed)


def test_open_kit_uses_a_server_on_this_machine_else_loads(server: BackgroundServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEKIT_URL", raising=False)
    monkeypatch.setenv("VOICEKIT_API_KEY", KEY)
    monkeypatch.setenv("VOICEKIT_PORT", str(server.port))  # as on a pod: the page's port on 127.0.0.1
    assert find_server() == server.url
    found = voicekit.open_kit("auto")
    assert isinstance(found, RemoteKit) and found.url == server.url
    found.close()
    monkeypatch.setenv("VOICEKIT_PORT", str(free_port()))
    if find_server() is not None:
        pytest.skip("something answers as a voicekit server on port 7860 of this machine")
    local = voicekit.open_kit("cpu", chat=False)
    try:
        assert not isinstance(local, RemoteKit) and local.say("Local.").audio().size > 0
    finally:
        local.close()
