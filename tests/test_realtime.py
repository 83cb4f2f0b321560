"""Talking out loud: Silero VAD, turn-taking, the realtime session (Python) and `/v1/realtime` (a real WebSocket
client streaming Piper's speech at real time), barge-in, and bad input. Real models throughout: the bundled
SmolLM2 + Piper kit, Whisper tiny.en, Silero VAD v6."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from asr import word_accuracy

from voicekit.audio import float_to_pcm16, resample
from voicekit.listening.turns import SpeechPaused, SpeechStarted, SpeechStopped, TurnDetector, TurnOptions
from voicekit.listening.vad import FRAME, SileroVAD
from voicekit.serve import BackgroundServer
from voicekit.serve.api import create_app
from voicekit.serve.auth import TOKEN_PROTOCOL, page_token

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402

QUESTION = "What is the capital of France?"
RATE = 24000
CHUNK = 960  # 40 ms at 24 kHz, as a browser's capture sends it


# -- speech made once --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def question(kit: Any) -> np.ndarray:
    """Piper asking QUESTION, 24 kHz, with 0.5 s of silence before and 1 s after (the turn's end)."""
    speech = resample(kit.say(QUESTION).audio(), kit.sample_rate, RATE)
    return np.concatenate([np.zeros(RATE // 2, np.float32), speech, np.zeros(RATE, np.float32)])


def _at_16k(samples: np.ndarray) -> np.ndarray:
    return resample(samples, RATE, 16000)


# -- VAD and turns -------------------------------------------------------------------------------------------


def test_vad_hears_speech_and_not_silence_or_noise(question: np.ndarray) -> None:
    vad = SileroVAD()
    speech = vad.probabilities(_at_16k(question))
    assert (speech > 0.5).mean() > 0.3, "Piper's question is mostly speech"
    assert speech[:10].max() < 0.5, "the leading silence is not"
    assert vad.probabilities(np.zeros(16000, np.float32)).max() < 0.1
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)
    assert vad.probabilities(noise).max() < 0.5, "white noise is not speech"
    # a live stream, fed in odd-sized pieces, scores exactly as the whole signal
    signal = _at_16k(question)
    live = SileroVAD()
    scores = [score for i in range(0, len(signal), 333) for score in live.push(signal[i:i + 333])]
    assert np.allclose(scores, vad.probabilities(signal)[: len(scores)], atol=1e-6)
    assert len(scores) == len(signal) // FRAME
    assert live._session is vad._session, "streams share one loaded model (a session per socket costs no load)"


def test_turns_start_and_end_where_the_speech_does(question: np.ndarray) -> None:
    two = _at_16k(np.concatenate([question, question]))
    detector = TurnDetector(SileroVAD(), TurnOptions(silence_s=0.5))
    heard = [event for i in range(0, len(two), 640) for event in detector.push(two[i:i + 640])]
    events = [event for event in heard if not isinstance(event, SpeechPaused)]
    assert [type(event) for event in events] == [SpeechStarted, SpeechStopped] * 2
    # each turn's last pause came with nothing said after it: a transcript started there stands for the turn
    for stopped in (event for event in heard if isinstance(event, SpeechStopped)):
        pause = [e for e in heard[: heard.index(stopped)] if isinstance(e, SpeechPaused)][-1]
        assert (pause.turn, pause.speech_s) == (stopped.turn, stopped.speech_s)
        assert pause.at_s == stopped.at_s and len(pause.audio) < len(stopped.audio)
    length = len(question) / RATE
    first_start, first_stop = events[0].at_s, events[1].at_s
    assert 0.45 <= first_start <= 0.7, "speech starts after the 0.5 s of silence"
    assert first_stop < length - 0.9, "the turn ends where the speech does, not where the silence proved it"
    assert events[2].at_s == pytest.approx(first_start + length, abs=0.05)
    stopped = events[1]
    assert isinstance(stopped, SpeechStopped) and stopped.kept
    assert len(stopped.audio) / 16000 >= first_stop - first_start + 0.25, "the turn's audio has its prefix"


def test_too_short_a_sound_is_not_a_turn(question: np.ndarray) -> None:
    signal = _at_16k(question)
    start = int(0.5 * 16000)
    blip = np.concatenate([np.zeros(8000, np.float32), signal[start:start + 3200], np.zeros(16000, np.float32)])
    detector = TurnDetector(SileroVAD(), TurnOptions(min_speech_s=0.4))
    events = detector.push(blip)
    stopped = [event for event in events if isinstance(event, SpeechStopped)]
    assert all(not event.kept for event in stopped), "0.2 s of speech is dropped, not answered"


# -- the Python session ---------------------------------------------------------------------------------------


def _feed(session: Any, samples: np.ndarray) -> None:
    for i in range(0, len(samples), CHUNK):
        session.append_audio(float_to_pcm16(samples[i:i + CHUNK]))


def _until(session: Any, wanted: str, timeout: float = 60.0) -> list[Any]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = session.next_event(timeout=deadline - time.monotonic())
        assert event is not None, f"the session closed before {wanted}"
        seen.append(event)
        if event.type == wanted:
            return seen
    raise AssertionError(f"no {wanted} within {timeout} s; saw {[event.type for event in seen]}")


def test_session_hears_a_question_and_answers_it_out_loud(kit: Any, question: np.ndarray) -> None:
    with kit.realtime() as session:
        _feed(session, question)
        events = _until(session, "response.done")
        types = [event.type for event in events]
        assert types[:4] == ["session.created", "input_audio_buffer.speech_started",
                             "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
        heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
        assert word_accuracy(QUESTION, heard.data["transcript"].lower()) >= 0.8
        audio = [event.audio for event in events if event.type == "response.output_audio.delta"]
        assert sum(len(samples) for samples in audio) / RATE > 0.5, "the reply is spoken"
        assert all(e.data["response_id"] == events[-1].data["response"]["id"] for e in events
                   if e.type.startswith("response.output_audio"))
        done = events[-1].data["response"]
        assert done["status"] == "completed" and done["timings"]["turn_end_to_first_audio_s"] > 0
        spoken = "".join(e.data["delta"] for e in events if e.type == "response.output_audio_transcript.delta")
        history = session.history
        assert [item["role"] for item in history] == ["user", "assistant"]
        assert history[1]["content"] == spoken and "interrupted" not in history[1]
        kept = session.session.items[-1]["_response"]
        assert kept.reply.chunks == [], "a long conversation keeps no audio of the replies it has sent"


def test_silence_gets_no_reply(kit: Any) -> None:
    with kit.realtime() as session:
        _feed(session, np.zeros(3 * RATE, np.float32))
        assert [event.type for event in session.events(timeout=2)] == ["session.created"]
        assert session.history == []


def _stream_silence(session: Any, seconds: float) -> None:
    """A microphone while the user listens: silence, at real time (a headset hears nothing of the reply)."""
    for _ in range(round(seconds * RATE / CHUNK)):
        session.append_audio(float_to_pcm16(np.zeros(CHUNK, np.float32)))
        time.sleep(CHUNK / RATE)


def test_speech_during_a_reply_stops_it_and_the_history_keeps_what_was_heard(kit: Any, question: np.ndarray) -> None:
    with kit.realtime(instructions="You tell long stories. Answer with at least six sentences.") as session:
        session.ask("Tell me a long story about a dragon who learns to sing.")
        first = _until(session, "response.output_audio.delta")
        old_id = first[-1].data["response_id"]
        old_requests = kit.chat_model.engine.active_requests()  # the story's
        _stream_silence(session, 0.6)  # past the echo grace period, as a user who listens a little and then speaks
        started = time.perf_counter()
        _feed(session, question[: RATE + len(question) // 2])  # the question and 0.4 s of its trailing silence
        events = _until(session, "response.done", timeout=30)
        stopped_after = time.perf_counter() - started
        done = events[-1].data["response"]
        assert done["id"] == old_id and done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "turn_detected"
        assert "input_audio_buffer.speech_started" in [event.type for event in events]
        assert stopped_after < 3.0
        cut = session.history[-1]
        assert cut["role"] == "assistant" and cut["interrupted"] is True
        assert cut["content"].endswith("…") or cut["content"] == ""
        late = [e for e in session.events(timeout=1) if e.type == "response.output_audio.delta"
                and e.data["response_id"] == old_id]
        assert late == [], "no audio of the stopped reply after its response.done"
        assert old_requests and not old_requests & kit.chat_model.engine.active_requests(), "the story's was aborted"


def test_a_client_that_sends_only_bursts_of_speech_still_cuts_the_reply_and_is_answered(kit: Any,
                                                                                     question: np.ndarray) -> None:
    """No audio while the reply plays, then the whole question at once (faster than real time): the echo monitor
    has little to judge by, so the barge-in may wait for the turn's words, but the reply is cut and the question
    answered."""
    with kit.realtime(instructions="You tell long stories. Answer with at least six sentences.") as session:
        session.ask("Tell me a long story about a dragon who learns to sing.")
        old_id = _until(session, "response.output_audio.delta")[-1].data["response_id"]
        time.sleep(0.6)
        _feed(session, question)
        events = _until(session, "response.done", timeout=30)
        done = events[-1].data["response"]
        assert done["id"] == old_id and done["status"] == "cancelled"
        transcribed = "conversation.item.input_audio_transcription.completed"
        if transcribed not in [event.type for event in events]:  # cut by the barge-in, before the words were heard
            events = _until(session, transcribed, timeout=30)
        heard = next(e for e in events if e.type == transcribed)
        assert word_accuracy(QUESTION, heard.data["transcript"].lower()) >= 0.8 and "echo" not in heard.data
        answer = _until(session, "response.done", timeout=60)[-1].data["response"]
        assert answer["status"] == "completed"
        assert [item["role"] for item in session.history][-3:] == ["assistant", "user", "assistant"]


# -- the WebSocket --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(kit: Any) -> Iterator[dict[str, BackgroundServer]]:
    open_server = BackgroundServer(create_app(kit))
    locked = BackgroundServer(create_app(kit, password="me:secret"))
    yield {"open": open_server, "locked": locked}
    open_server.stop()
    locked.stop()


def _ws(server: BackgroundServer) -> str:
    return server.url.replace("http://", "ws://").rstrip("/") + "/v1/realtime"


async def _events_until(ws: Any, wanted: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append(json.loads(await ws.recv()))
            if seen[-1]["type"] == wanted:
                return seen


async def _stream(ws: Any, samples: np.ndarray, realtime: bool = True) -> None:
    for i in range(0, len(samples), CHUNK):
        pcm = float_to_pcm16(samples[i:i + CHUNK])
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
        if realtime:
            await asyncio.sleep(CHUNK / RATE)


def test_realtime_socket_answers_speech_streamed_at_real_time(servers: dict[str, BackgroundServer],
                                                              question: np.ndarray, kit: Any) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with connect(_ws(servers["open"]), max_size=None) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created"
            assert created["session"]["output_audio_format"] == {"type": "audio/pcm", "rate": RATE}
            await ws.send(json.dumps({"type": "session.update", "session": {"voice": kit.default_voice}}))
            sender = asyncio.create_task(_stream(ws, question))
            events = await _events_until(ws, "response.done")
            await sender
            return events

    events = asyncio.run(scenario())
    types = [event["type"] for event in events]
    order = ["session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "conversation.item.input_audio_transcription.completed", "response.created",
             "response.output_audio.delta", "response.done"]
    assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order), types
    heard = events[types.index("conversation.item.input_audio_transcription.completed")]["transcript"]
    assert word_accuracy(QUESTION, heard.lower()) >= 0.8
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / RATE > 0.5
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert abs(done["timings"]["audio_sent_s"] - len(pcm) / 2 / RATE) < 0.01, "every sample sent arrived"
    assert all(e["response_id"] == done["id"] for e in events if e["type"].startswith("response.output_audio"))


def test_realtime_socket_bad_input_gets_errors_and_the_socket_stays_usable(servers: dict[str, BackgroundServer],
                                                                          question: np.ndarray) -> None:
    async def scenario() -> dict[str, Any]:
        codes: dict[str, Any] = {}
        async with connect(_ws(servers["open"]), max_size=None) as ws:
            await ws.recv()  # session.created
            bad = {"invalid_json": "{not json", "unknown_event": json.dumps({"type": "session.explode"}),
                   "invalid_event": json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}),
                   "voice": json.dumps({"type": "session.update", "session": {"voice": "nobody"}}),
                   "cancel": json.dumps({"type": "response.cancel"}),
                   "odd": json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
                   "nothing": json.dumps({"type": "response.create"}),
                   "empty_commit": json.dumps({"type": "input_audio_buffer.commit"})}
            for name, frame in bad.items():
                await ws.send(frame)
                codes[name] = json.loads(await ws.recv())
            await ws.send(b"\x00\x01")
            codes["binary"] = json.loads(await ws.recv())
            # still usable: the whole question at once, far faster than real time, is heard and answered
            await _stream(ws, question, realtime=False)
            codes["after"] = await _events_until(ws, "response.done")
        return codes

    codes = asyncio.run(scenario())
    assert all(codes[name]["type"] == "error" for name in codes if name != "after")
    assert codes["invalid_json"]["error"]["code"] == "invalid_json"
    assert codes["unknown_event"]["error"]["code"] == "unknown_event"
    assert "base64" in codes["invalid_event"]["error"]["message"]
    assert "nobody" in codes["voice"]["error"]["message"]
    assert codes["cancel"]["error"]["code"] == "response_cancel_not_active"
    assert "even number of bytes" in codes["odd"]["error"]["message"]
    assert codes["nothing"]["error"]["code"] == "nothing_to_answer"
    assert codes["empty_commit"]["error"]["code"] == "input_audio_buffer_commit_empty"
    assert codes["binary"]["error"]["code"] == "binary_not_supported"
    assert codes["after"][-1]["response"]["status"] == "completed"


def test_realtime_socket_needs_credentials_when_a_password_is_set(servers: dict[str, BackgroundServer]) -> None:
    url = _ws(servers["locked"])

    async def opens(**options: Any) -> str:
        try:
            async with connect(url, **options) as ws:
                return json.loads(await ws.recv())["type"]
        except websockets.exceptions.InvalidStatus as refused:
            return f"refused {refused.response.status_code}"

    async def scenario() -> list[str]:
        token = page_token("secret")
        return [await opens(), await opens(additional_headers={"Authorization": "Bearer wrong"}),
                await opens(additional_headers={"Authorization": "Bearer secret"}),
                await opens(subprotocols=["realtime", f"{TOKEN_PROTOCOL}{token}"]),
                await opens(subprotocols=[f"{TOKEN_PROTOCOL}{page_token('guess')}"]),
                await opens(subprotocols=["openai-insecure-api-key.secret"])]

    assert asyncio.run(scenario()) == ["refused 403", "refused 403", "session.created", "session.created",
                                       "refused 403", "session.created"]


def test_a_client_that_vanishes_mid_reply_leaves_no_engine_request(servers: dict[str, BackgroundServer],
                                                                   kit: Any) -> None:
    async def scenario() -> None:
        async with connect(_ws(servers["open"]), max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            await _events_until(ws, "response.output_audio.delta")
        # the socket closed mid-reply

    asyncio.run(scenario())
    admission = servers["open"].app.state.voicekit.admission
    deadline = time.monotonic() + 10  # the request is aborted first, the slot given back as the reply winds down
    while (kit.chat_model.engine.active_requests() or admission.running) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kit.chat_model.engine.active_requests() == set()
    assert admission.running == 0, "its running slot was given back"


def test_a_reply_on_a_busy_server_is_an_error_not_a_wait(kit: Any) -> None:
    from voicekit.serve.admission import Limits

    server = BackgroundServer(create_app(kit, limits=Limits(running=1, waiting=0)))

    async def ask(ws: Any, text: str) -> None:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
        await ws.send(json.dumps({"type": "response.create"}))

    async def scenario() -> list[dict[str, Any]]:
        async with connect(_ws(server), max_size=None) as first, connect(_ws(server), max_size=None) as second:
            await ask(first, "Tell me a long story.")
            await _events_until(first, "response.output_audio.delta")
            await ask(second, "Hello there.")
            return await _events_until(second, "response.done", timeout=30)

    try:
        events = asyncio.run(scenario())
    finally:
        server.stop()
    errors = [event["error"] for event in events if event["type"] == "error"]
    assert errors and errors[0]["code"] == "busy" and errors[0]["retry_after"] >= 1
    assert events[-1]["response"]["status"] == "failed"
    assert not [event for event in events if event["type"] == "response.output_audio.delta"]


def test_speaking_over_a_reply_on_the_socket_stops_its_audio(servers: dict[str, BackgroundServer],
                                                            question: np.ndarray) -> None:
    """Barge-in over the wire, as `bench talk` measures it: the story stops, none of its audio follows its
    response.done, and the interruption is heard and answered."""
    from voicekit.bench.talk import barge_in

    lead = np.zeros(RATE // 2, np.float32)  # the bench's questions start with 0.5 s of silence, as this one does
    assert np.array_equal(question[: len(lead)], lead)
    result = asyncio.run(barge_in(_ws(servers["open"]), question))
    assert result["status"] == "cancelled" and result["reason"] == "turn_detected"
    assert result["late_audio_deltas"] == 0
    assert 0 < result["barge_in_stop_s"] < 3.0


def test_an_assistant_message_can_be_added_and_other_roles_cannot(servers: dict[str, BackgroundServer]) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with connect(_ws(servers["open"]), max_size=None) as ws:
            await ws.recv()
            for role, part in (("assistant", "output_text"), ("system", "input_text"), ("assistant", "input_image")):
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": role, "content": [{"type": part, "text": "Hello there."}]}}))
            return [json.loads(await ws.recv()) for _ in range(3)]

    added, system, image = asyncio.run(scenario())
    assert added["type"] == "conversation.item.added" and added["item"]["role"] == "assistant"
    assert added["item"]["content"] == [{"type": "output_text", "text": "Hello there."}]
    assert system["type"] == image["type"] == "error"
    assert "role: 'user' or 'assistant'" in system["error"]["message"]
    assert "needs a content part of type output_text or text" in image["error"]["message"]


def _feed_live(session: Any, samples: np.ndarray) -> None:
    """Audio at real time, as a microphone sends it (40 ms a chunk)."""
    for i in range(0, len(samples), CHUNK):
        session.append_audio(float_to_pcm16(samples[i:i + CHUNK]))
        time.sleep(CHUNK / RATE)


def test_a_headset_user_who_repeats_the_replys_words_is_answered(question: np.ndarray) -> None:
    # The reply says the question's words back; on a headset the microphone never hears it, so the same words from
    # the user right after it are the user's turn, not the reply's echo (the capacity bench's talker went unanswered).
    from scripted import ScriptedEngine

    import voicekit

    with voicekit.load("cpu", engine=ScriptedEngine("What is the capital of France? It is Paris.")) as echoing, \
            echoing.realtime() as session:
        _feed_live(session, question)
        first = _until(session, "response.done")
        played = sum(len(e.audio) for e in first if e.type == "response.output_audio.delta") / RATE
        _feed_live(session, np.zeros(int((played + 0.3) * RATE), np.float32))  # silent while the reply plays
        _feed_live(session, question)
        second = _until(session, "response.done", timeout=30)
        roles = [item["role"] for item in session.history]
    heard = [e.data for e in second if e.type == "conversation.item.input_audio_transcription.completed"]
    assert heard and word_accuracy(QUESTION, heard[-1]["transcript"].lower()) >= 0.8 and "echo" not in heard[-1]
    assert second[-1].data["response"]["status"] == "completed"
    assert roles == ["user", "assistant", "user", "assistant"]


def test_a_voice_that_falls_behind_sends_silence_before_the_loudspeaker_runs_dry() -> None:
    """The chat model stalls after the first sentence while the client streams its microphone: silence goes out so
    that, from the first audio on, the server has always sent at least as much as the client has played (a
    loudspeaker that runs dry restarts later and moves the echo's delay: AEC3 then leaks; tests/test_echo.py). The
    words, the transcript and the history are those of the reply."""
    from scripted import ScriptedEngine

    import voicekit

    reply = "The first sentence is short. The second one comes after a wait."
    engine = ScriptedEngine(reply, hold_after=6)  # "The" of the second sentence lets the first one go
    arrivals: list[tuple[float, Any]] = []
    with voicekit.load("cpu", engine=engine) as stalling, stalling.realtime() as session:
        session.ask("Tell me something.")
        started = time.perf_counter()
        while time.perf_counter() - started < 6.0:  # the stall, with the microphone streaming at real time
            session.append_audio(float_to_pcm16(np.zeros(CHUNK, np.float32)))
            arrivals += [(time.perf_counter(), event) for event in session.events(timeout=0.001)]
            time.sleep(CHUNK / RATE)
        released = time.perf_counter()
        engine.release.set()
        arrivals += [(time.perf_counter(), event) for event in _until(session, "response.done")]
        history = session.history
    audio = [(at, event.audio) for at, event in arrivals if event.type == "response.output_audio.delta"]
    assert audio and audio[0][0] < released - 2.0, "the first sentence was spoken early in the stall"
    first_at, sent = audio[0][0], 0.0
    for at, samples in [*audio, (released, np.zeros(0, np.float32))]:
        if at <= released:
            assert sent >= at - first_at - 0.15, f"the client ran dry {at - first_at:.2f} s in ({sent:.2f} s sent)"
        sent += len(samples) / RATE
    silence = sum(len(samples) for at, samples in audio if not np.any(samples)) / RATE
    assert 1.0 <= silence <= 6.0, silence
    done = arrivals[-1][1].data["response"]
    assert done["status"] == "completed" and history[-1]["content"] == reply
