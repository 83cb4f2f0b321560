"""`voicekit.connect()`: the kit's API over a real running server (uvicorn on 127.0.0.1, the real cpu kit).

The server runs in this process (app.BackgroundServer), so its bookkeeping can be read directly: that is how
streaming is proven (the speech backend is held after its first chunk while the client already plays it) and
how hang-ups are proven to stop the work behind them. The `state` and `tts_gate` fixtures are test_server's,
here on this module's server (behind an API key).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import test_server
from scripted import ScriptedBackend, ScriptedEngine, kit_over
from test_server import Gate, no_work_left, wait_until

import voicekit
from voicekit.client import AuthenticationError, RemoteKit, ServerUnavailableError, find_server
from voicekit.errors import EmptyTextError, RemoteError, TextTooLongError, UnknownVoiceError
from voicekit.pipeline import AudioChunk
from voicekit.serve import BackgroundServer, compose
from voicekit.serve.api import create_app
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
    assert all(first.pieces[chunk.piece_index] == chunk.piece for chunk in first.chunks)  # real piece marks
    assert first.timings.audio_s == pytest.approx(audio.size / remote.sample_rate, abs=0.05)
    assert first.history == [{"role": "user", "content": "My name is Ada."},
                             {"role": "assistant", "content": first.text}]
    second = remote.chat("What is my name?", history=first.history, seed=2, max_tokens=16, mode="overlap")
    second.audio()
    record = list(state.finished.values())[-1]  # the server's own record of the turn
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


# -- the event stream: remote replies read exactly as local ones ---------------------------------------

REPLY = "Well then, here we are at last. It is good to see you. Shall we begin?"


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Any, ScriptedEngine, RemoteKit, Any]]:
    """A kit of the scripted engine and backend (exact, instant replies) behind its own server, its client and the
    server's bookkeeping."""
    engine = ScriptedEngine(REPLY)
    local = kit_over(engine, ScriptedBackend(), first_fragment_chars=8)
    with BackgroundServer(create_app(local)) as running, voicekit.connect(running.url) as connected:
        yield local, engine, connected, running.app.state.voicekit
    local.close()


def marks(chunks: list[AudioChunk]) -> list[tuple[int, str, int]]:
    return [(chunk.piece_index, chunk.piece, chunk.samples.size) for chunk in chunks]


def facts(reply: Any) -> tuple[Any, ...]:
    timings = reply.timings
    return (reply.text, reply.sentences, reply.pieces, reply.history, reply.voice, reply.done,
            timings.sentences, timings.pieces, round(timings.audio_s, 3))


@pytest.mark.parametrize("mode", ["sequential", "overlap"])
def test_remote_chunks_carry_the_local_pieces_text_and_sentences(scripted: Any, mode: str) -> None:
    local_kit, _, remote, _ = scripted
    local = local_kit.chat("Hello.", mode=mode)
    local_chunks = list(local)
    reply = remote.chat("Hello.", mode=mode)
    chunks = list(reply)
    assert marks(chunks) == marks(local_chunks) and facts(reply) == facts(local)
    assert np.allclose(reply.audio(), local.audio(), atol=1 / 32767)  # the same audio, as 16-bit PCM carries it
    assert reply.sentences == ["Well then, here we are at last.", "It is good to see you.", "Shall we begin?"]
    if mode == "overlap":  # the first clause was spoken early, as a piece of its own
        assert reply.pieces[:2] == ["Well then,", "here we are at last."] and chunks[0].piece == "Well then,"
    said, local_said = remote.say("One here. Two there."), local_kit.say("One here. Two there.")
    assert marks(list(said)) == marks(list(local_said)) and facts(said) == facts(local_said)


def test_sync_and_async_forms_give_the_same_reply(scripted: Any) -> None:
    remote = scripted[2]

    async def talk() -> tuple[Any, list[AudioChunk], Any, list[AudioChunk]]:
        chat = remote.achat("Hello.", mode="overlap", history=[{"role": "user", "content": "Hi."}])
        chat_chunks = [chunk async for chunk in chat]
        said = remote.asay("One here. Two there.")
        return chat, chat_chunks, said, [chunk async for chunk in said]

    chat, chat_chunks, said, said_chunks = asyncio.run(talk())
    sync_chat = remote.chat("Hello.", mode="overlap", history=[{"role": "user", "content": "Hi."}])
    assert marks(chat_chunks) == marks(list(sync_chat)) and facts(chat) == facts(sync_chat)
    sync_said = remote.say("One here. Two there.")
    assert marks(said_chunks) == marks(list(sync_said)) and facts(said) == facts(sync_said)
    assert len(chat.history) == 3


def test_closing_a_remote_chat_early_aborts_the_engine_request(scripted: Any) -> None:
    _, engine, remote, state = scripted
    engine.hold_after = 4  # the engine waits after "Well then, here we": the first clause is already spoken
    try:
        for form in ("sync", "unread", "async"):
            engine.release.clear()
            aborted = len(engine.aborted)
            if form != "async":
                reply = remote.chat("Hello.", mode="overlap")  # returns once the first clause is spoken
                if form == "sync":
                    assert next(reply).piece == "Well then,"
                assert engine.active_requests() and not reply.done
                reply.close()
            else:
                async def leave() -> None:
                    reply = remote.achat("Hello.", mode="overlap")
                    assert (await anext(reply)).piece == "Well then," and engine.active_requests()
                    await reply.aclose()

                asyncio.run(leave())
            wait_until(lambda: not state.active and not engine.active_requests(), what="the request to be aborted")
            assert len(engine.aborted) == aborted + 1, form
            assert remote.health()["engine_requests"] == 0
    finally:
        engine.hold_after = None
        engine.release.set()


def test_the_events_route_reads_line_by_line_with_plain_httpx(scripted: Any) -> None:
    local_kit, _, remote, _ = scripted
    local = local_kit.chat("Hello.", mode="overlap")
    local.audio()
    with httpx.stream("POST", f"{remote.url}/v1/chat/events", json={"message": "Hello.", "mode": "overlap"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) for line in r.iter_lines() if line]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "error" not in kinds
    assert events[0]["sample_rate"] == local_kit.sample_rate and events[0]["voice"] == local_kit.default_voice
    pieces = [event["text"] for event in events if event["type"] == "piece"]
    audio = b""
    for index, event in enumerate(events):
        if event["type"] == "audio":  # every chunk comes after the mark of its piece
            assert kinds[:index].count("piece") == event["piece_index"] + 1
            audio += base64.b64decode(event["audio"])
    assert pieces == local.pieces and "".join(e["delta"] for e in events if e["type"] == "text") == local.text
    assert len(audio) == 2 * local.audio().size
    done = events[-1]
    assert (done["text"], done["sentences"], done["pieces"]) == (local.text, local.sentences, local.pieces)
    assert done["history"] == local.history and done["timings"]["pieces"] == 4
    refused = httpx.post(f"{remote.url}/v1/chat/events", json={"message": " "})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "empty_input"
    said = httpx.post(f"{remote.url}/v1/audio/speech/events", json={"input": "One here."}).text.splitlines()
    assert [json.loads(line)["type"] for line in said] == ["start", "text", "sentences", "piece", "audio", "audio",
                                                           "done"]


def test_a_reply_failing_mid_stream_ends_with_an_error_event(scripted: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    local_kit, _, remote, state = scripted
    speak = local_kit.tts.synthesize

    async def failing(text: str, voice: str) -> Any:
        if text.startswith("It is"):
            raise RuntimeError("the speech model broke")
        async for samples in speak(text, voice):
            yield samples

    monkeypatch.setattr(local_kit.tts, "synthesize", failing)
    reply = remote.chat("Hello.")
    with pytest.raises(RemoteError, match="failed mid-reply") as failed:
        for _ in reply:
            pass
    assert failed.value.code == "internal_error" and {chunk.piece_index for chunk in reply.chunks} == {0}
    wait_until(lambda: not state.active, what="the request to finish")
    assert list(state.finished.values())[-1].outcome == "failed"
