"""`RemoteKit.realtime()` / `arealtime()`: a spoken conversation with a real server (uvicorn on 127.0.0.1, the real
cpu kit) over `WS /v1/realtime`, through `voicekit.connect()`: Piper's question streamed at real time is heard and
answered, typed questions, cancelling a reply, the history kept from the events, refused sessions, the async form."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import test_realtime
from asr import word_accuracy
from test_realtime import CHUNK, QUESTION, RATE, _until

import voicekit
from voicekit.client import AuthenticationError, RemoteKit
from voicekit.errors import RemoteError, UnknownVoiceError, VoicekitError
from voicekit.listening.blocking import RealtimeSession
from voicekit.listening.events import Event
from voicekit.serve import BackgroundServer
from voicekit.serve.admission import Limits
from voicekit.serve.api import create_app

pytestmark = pytest.mark.slow

KEY = "sk-realtime-client"
SHORT = "Answer in one short sentence."
STORIES = "You tell long stories. Answer with at least six sentences."


@pytest.fixture(scope="module")
def server(kit: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(kit, api_key=KEY)) as running:
        yield running


question = test_realtime.question  # Piper asking QUESTION at 24 kHz, 0.5 s of silence before and 1 s after


@pytest.fixture(scope="module")
def remote(server: BackgroundServer) -> Iterator[RemoteKit]:
    with voicekit.connect(server.url, api_key=KEY) as connected:
        yield connected


def test_a_question_spoken_at_real_time_is_heard_and_answered(remote: RemoteKit, question: np.ndarray) -> None:
    with remote.realtime(instructions=SHORT) as session:
        assert isinstance(session, RealtimeSession), "the local kit's sync session, driving the remote one"
        started, events = time.perf_counter(), []
        for i in range(0, len(question), CHUNK):
            session.append_audio(question[i:i + CHUNK], RATE)  # float32 samples, as a microphone gives them
            with contextlib.suppress(TimeoutError):
                while True:  # what has come in so far, as a client's loop takes it (timeout 0: only what is here)
                    events.append(session.next_event(timeout=0))
            time.sleep(max(0.0, started + (i + CHUNK) / RATE - time.perf_counter()))
        assert [event.type for event in events][:2] == ["session.created", "session.updated"]
        if "response.done" not in [event.type for event in events]:
            events += _until(session, "response.done")
        assert [event for event in session.events(timeout=0.5) if event.type.startswith("response.")] == []
        history = session.history
    assert all(isinstance(event, Event) for event in events)
    types = [event.type for event in events]
    assert types[0] == "session.created" and events[0].data["session"]["id"] == session.session.id
    assert types[1] == "session.updated" and events[1].data["session"]["instructions"] == SHORT  # the instructions
    assert session.session.instructions == SHORT
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "conversation.item.input_audio_transcription.completed", "response.created",
             "response.output_audio.delta", "response.done"]
    assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order), types
    heard = events[types.index("conversation.item.input_audio_transcription.completed")].data["transcript"]
    assert word_accuracy(QUESTION, heard.lower()) >= 0.8
    audio = [event.audio for event in events if event.type == "response.output_audio.delta"]
    assert all(isinstance(samples, np.ndarray) and samples.dtype == np.float32 for samples in audio)
    assert all("delta" not in event.data for event in events if event.type == "response.output_audio.delta")
    done = events[-1].data["response"]
    assert done["status"] == "completed"
    sent = sum(len(samples) for samples in audio) / RATE
    assert sent > 0.5 and abs(done["timings"]["audio_sent_s"] - sent) < 0.01, "every sample sent arrived"
    said = next(event for event in events if event.type == "response.output_audio_transcript.done")
    assert [(item["role"], item["content"]) for item in history] == [("user", heard),
                                                                    ("assistant", said.data["transcript"])]
    assert history[1]["id"] == done["output"][0]["id"] and "interrupted" not in history[1]


def test_typed_questions_cancel_and_the_history_kept_from_the_events(remote: RemoteKit, kit: Any) -> None:
    with remote.realtime(instructions=STORIES) as session:
        with pytest.raises(UnknownVoiceError):
            session.update(voice="nobody")  # checked here, as a local session does
        story = session.ask("Tell me a long story about a dragon who learns to sing.")
        assert story and _until(session, "response.output_audio.delta")[-1].data["response_id"] == story
        assert session.cancel() is True
        done = _until(session, "response.done", timeout=30)[-1].data["response"]
        assert (done["id"], done["status"], done["status_details"]["reason"]) == (story, "cancelled",
                                                                                  "client_cancelled")
        late = [event for event in session.events(timeout=1) if event.type == "response.output_audio.delta"]
        assert late == [], "no audio of the cancelled reply after its response.done"
        assert session.cancel() is False, "nothing runs now"
        deadline = time.monotonic() + 10
        while kit.chat_model.engine.active_requests() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kit.chat_model.engine.active_requests() == set(), "the story's engine request was aborted"

        session.update(instructions=SHORT)
        answer = session.ask("What colour is the sky?")
        events = _until(session, "response.done")
        assert events[-1].data["response"] == {**events[-1].data["response"], "id": answer, "status": "completed"}
        said = next(event for event in events if event.type == "response.output_audio_transcript.done")
        history = session.history
        assert [(item["role"], item.get("interrupted", False)) for item in history] == [
            ("user", False), ("assistant", True), ("user", False), ("assistant", False)]
        assert history[0]["content"].startswith("Tell me a long story") and history[3]["content"] == \
            said.data["transcript"]

        # the client says it played the whole reply but cut it there: kept whole, marked interrupted, as the server's
        # session computes it from what it sent: the spoken pieces (the transcript deltas), which are the reply's
        # text as cleaned for speech (a reply with markdown or symbols differs from its written transcript)
        spoken = "".join(event.data["delta"] for event in events
                         if event.type == "response.output_audio_transcript.delta"
                         and event.data["response_id"] == answer)
        session.send({"type": "conversation.item.truncate", "item_id": history[3]["id"], "content_index": 0,
                      "audio_end_ms": 10**6})
        _until(session, "conversation.item.truncated", timeout=10)
        assert session.history[3] == {**history[3], "content": f"{spoken}…", "interrupted": True}
        session.send({"type": "conversation.item.truncate", "item_id": history[3]["id"], "content_index": 0,
                      "audio_end_ms": 0})
        _until(session, "conversation.item.truncated", timeout=10)
        assert session.history[3]["content"] == ""
    assert session.next_event(timeout=1) is None, "closed"


def test_a_refused_session_raises_one_clear_line(kit: Any) -> None:
    first = BackgroundServer(create_app(kit, password="me:old"))
    remote = voicekit.connect(first.url, api_key="old")
    first.stop()  # the server restarts with another password
    second = BackgroundServer(create_app(kit, password="me:new"), port=first.port)
    try:
        with pytest.raises(AuthenticationError) as refused:
            remote.realtime()
        message = str(refused.value)
        assert message == f"the voicekit server at {first.url} needs credentials: the key or password was refused"
        with pytest.raises(AuthenticationError):
            voicekit.connect(second.url, api_key="wrong")
    finally:
        remote.close()
        second.stop()


def test_the_async_form_and_a_full_server(kit: Any) -> None:
    server = BackgroundServer(create_app(kit, limits=Limits(running=1, waiting=0)))  # 4 realtime sessions at most
    remote = voicekit.connect(server.url)

    async def scenario() -> tuple[str | None, list[Event], list[dict[str, Any]], VoicekitError]:
        others = [remote.arealtime() for _ in range(3)]
        async with remote.arealtime(instructions=SHORT) as session:
            answer = await session.ask("Say hello.")
            events: list[Event] = []
            async for event in session:
                events.append(event)
                if event.type == "response.done":
                    break
            for other in others:
                await other.connect()
            with pytest.raises(RemoteError) as refused:
                await remote.arealtime().next_event(timeout=5)  # the fifth: refused when it opens
            conversation = session.conversation()
        await asyncio.gather(*(other.aclose() for other in others))
        again = remote.arealtime()
        await again.connect()  # once they are closed, there is room again
        await again.aclose()
        return answer, events, conversation, refused.value

    try:
        answer, events, conversation, refused = asyncio.run(scenario())
    finally:
        remote.close()
        server.stop()
    assert answer and events[-1].data["response"]["id"] == answer
    assert events[-1].data["response"]["status"] == "completed"
    audio = [event.audio for event in events if event.type == "response.output_audio.delta"]
    assert audio and all(samples.dtype == np.float32 for samples in audio)
    assert [item["role"] for item in conversation] == ["user", "assistant"]
    assert conversation[0]["content"] == "Say hello."
    assert refused.code == "busy" and "as many realtime sessions as it can take" in str(refused)
    assert "\n" not in str(refused)


def test_a_session_starts_from_a_past_conversation(remote: RemoteKit, server: BackgroundServer) -> None:
    """`history=` is sent as conversation.item.create events (user and assistant messages, as OpenAI's protocol
    restores a conversation): the server's session holds them before the next question, and so does the client's."""
    past = [{"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada…", "interrupted": True}]  # a reply cut short
    with remote.realtime(instructions=SHORT, history=past) as session:
        session.ask("What is my name?")
        _until(session, "response.done", timeout=60)
        history = session.history
    assert [(item["role"], item["content"], item.get("interrupted", False)) for item in history[:3]] == [
        ("user", "My name is Ada.", False), ("assistant", "Nice to meet you, Ada…", True),
        ("user", "What is my name?", False)]
    assert history[3]["role"] == "assistant" and history[3]["content"]
    with pytest.raises(VoicekitError, match=r"history\[0\]: `content` is the message.s text"):
        remote.realtime(history=[{"role": "user", "content": None}])
