"""Semantic end of turn: Smart Turn v3.2 on real speech in several voices, the words that cannot end a sentence, the
eagerness policy, and the turn detector acting on verdicts (Silero VAD throughout)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from room import RATE, speech, stretch_pause, with_silence

from voicekit.audio import float_to_pcm16, resample
from voicekit.listening.events import TalkOptions, turn_detection, with_turn_detection
from voicekit.listening.smart_turn import (
    MODEL_SHA256,
    EndOfTurnPolicy,
    SmartTurn,
    bundled_model_path,
    features,
    may_go_on,
    sounds_unfinished,
    sounds_whole,
)
from voicekit.listening.turns import SpeechPaused, SpeechStarted, SpeechStopped, TurnDetector, TurnOptions
from voicekit.listening.vad import FRAME, SileroVAD

VOICES = ["en_US-joe-medium", "af_heart", "bm_george", "am_michael"]


def _16k(audio: np.ndarray) -> np.ndarray:
    return resample(audio, RATE, 16000)


def test_the_model_is_pipecats_file_and_its_input_is_eight_seconds_of_log_mel() -> None:
    path = bundled_model_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MODEL_SHA256
    assert (path.parent / "SMART_TURN_LICENSE.txt").read_text().startswith("smart-turn-v3.2-cpu.onnx")
    short, long = features(np.zeros(1600, np.float32)), features(np.ones(20 * 16000, np.float32) * 0.01)
    assert short.shape == long.shape == (80, 800) and short.dtype == np.float32
    ramp = np.linspace(-0.5, 0.5, 10 * 16000, dtype=np.float32)
    assert np.array_equal(features(ramp), features(ramp[-8 * 16000:])), "only the last 8 s count"


@pytest.mark.parametrize("voice", VOICES)
def test_a_finished_question_or_request_ends_the_turn_in_any_voice(kit: Any, kokoro_voices: Path, voice: str) -> None:
    model = SmartTurn()
    for text in ("What is the capital of France?", "Please book a table for four people at eight tonight."):
        audio = _16k(with_silence(speech(kit, text, voice, kokoro_voices), 0.5, 0.2))
        assert model.probability(audio) >= 0.5, (voice, text)


def test_words_that_cannot_end_a_sentence_overrule_a_finished_sound(kit: Any, kokoro_voices: Path) -> None:
    """"Please book a table for," sounds finished in every voice tried; its words do not."""
    voice = "af_heart"
    text = "Please book a table for, four people at eight tonight."
    sentence = speech(kit, text, voice, kokoro_voices)
    paused, at_s = stretch_pause(kit, sentence, text, 0.6)
    head = _16k(with_silence(paused[: int(at_s * RATE)], 0.5, 0.2))
    heard = kit.transcribe(head, 16000).text
    assert "table" in heard.lower() and sounds_unfinished(heard), heard
    assert not sounds_unfinished(kit.transcribe(_16k(with_silence(sentence, 0.5, 0.3)), 16000).text)


@pytest.mark.parametrize("text, unfinished", [
    ("Please book a table for.", True), ("So what I was thinking is...", True), ("Can you tell me about the?", True),
    ("My flight leaves on Monday and…", True), ("Um", True), ("I'd like the", True),
    ("Where are you from?", False), ("What is it for?", False), ("I think so.", False), ("Yes.", False),
    ("What is the capital of France?", False), ("I would like to order.", False), ("", False),
    ("Please book a table for 4 people at 8 to 9.", False), ("Set a timer for 10.", False), ("Meet me at 5", False),
])
def test_sounds_unfinished(text: str, unfinished: bool) -> None:
    assert sounds_unfinished(text) is unfinished


@pytest.mark.parametrize("text, whole", [
    ("So what I was thinking is we could leave early.", True), ("Yes.", True), ("Where are you from?", True),
    ('He said "stop."', True), ("Please book a table for.", False), ("I would like to order.", False),
    ("So what I was thinking is...", False), ("and then we", False), ("", False), ("...", False),
])
def test_sounds_whole(text: str, whole: bool) -> None:
    assert sounds_whole(text) is whole


@pytest.mark.parametrize("text, goes_on", [
    ("I would like to order.", True), ("I need to book", True), ("Yes, I want to buy.", True),
    ("What would you like to order?", False), ("I would like to order a large pizza.", False),
    ("I need to eat.", False), ("Order", False), ("", False),
])
def test_words_that_usually_go_on(text: str, goes_on: bool) -> None:
    assert may_go_on(text) is goes_on


def test_the_policy_waits_longer_the_less_finished_a_turn_sounds() -> None:
    medium = EndOfTurnPolicy.for_eagerness("auto")
    assert medium == EndOfTurnPolicy.for_eagerness("medium") == EndOfTurnPolicy(0.5, 0.2, 4.0)
    assert medium.silence_to_end(0.9) == medium.silence_to_end(0.5) == 0.2
    assert medium.silence_to_end(0.0) == pytest.approx(4.0)
    waits = [medium.silence_to_end(p) for p in (0.45, 0.3, 0.1, 0.0)]
    assert waits == sorted(waits) and 0.2 < waits[0] < 1.0
    low, high = EndOfTurnPolicy.for_eagerness("low"), EndOfTurnPolicy.for_eagerness("high")
    assert low.silence_to_end(0.6) > medium.silence_to_end(0.6) == high.silence_to_end(0.6) == 0.2
    assert (low.max_wait_s, medium.max_wait_s, high.max_wait_s) == (8.0, 4.0, 2.0)
    with pytest.raises(ValueError, match="eagerness must be one of low, medium, high, auto"):
        EndOfTurnPolicy.for_eagerness("eager")


def test_turn_detection_takes_openais_shapes() -> None:
    base = TalkOptions()
    semantic = with_turn_detection(base, {"type": "semantic_vad", "eagerness": "low"})
    assert turn_detection(semantic) == {"type": "semantic_vad", "eagerness": "low", "threshold": 0.5,
                                        "prefix_padding_ms": 300}
    vad = with_turn_detection(semantic, {"type": "server_vad", "silence_duration_ms": 700, "threshold": 0.6})
    assert turn_detection(vad) == {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
                                   "prefix_padding_ms": 300}
    assert not vad.turn.semantic and vad.turn.pause_s < vad.turn.silence_s
    manual = with_turn_detection(vad, None)
    assert turn_detection(manual) == {"type": "none"} and manual.turn.manual
    assert manual.turn.pause_frames == (None, None)  # the client commits: nothing is transcribed early
    # back from "none", a pause is transcribed early and asked about again, as in a session that never left
    back = with_turn_detection(manual, {"type": "semantic_vad"})
    assert not back.turn.manual
    assert back.turn.pause_frames == with_turn_detection(base, {"type": "semantic_vad"}).turn.pause_frames == (3, 6)
    assert with_turn_detection(manual, {"type": "server_vad"}).turn.silence_s == 0.5
    for bad in ({"type": "magic"}, {"type": "server_vad", "silence_duration_ms": -5},
                {"type": "server_vad", "threshold": "high"}, {"type": "semantic_vad", "eagerness": "eager"}):
        with pytest.raises(ValueError):
            with_turn_detection(base, bad)


# -- the detector acting on verdicts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentence(kit: Any) -> np.ndarray:
    """Piper's sentence, 16 kHz, 0.5 s of silence before, none after."""
    return _16k(with_silence(speech(kit, "I would like a large pizza with olives."), 0.5, 0.0))


def _semantic_detector() -> TurnDetector:
    return TurnDetector(SileroVAD(), TurnOptions(end_of_turn=EndOfTurnPolicy.for_eagerness("auto")))


def _push(detector: TurnDetector, audio: np.ndarray) -> list[Any]:
    return [event for i in range(0, len(audio), 640) for event in detector.push(audio[i:i + 640])]


def test_a_finished_verdict_ends_the_turn_at_once(sentence: np.ndarray) -> None:
    detector = _semantic_detector()
    events = _push(detector, np.concatenate([sentence, np.zeros(int(0.25 * 16000), np.float32)]))
    paused = [event for event in events if isinstance(event, SpeechPaused)]
    assert [type(e) for e in events if not isinstance(e, SpeechPaused)] == [SpeechStarted]
    assert len(paused) >= 1 and detector.in_turn, "a 0.2 s pause asks the model; alone it ends nothing"
    stopped = detector.verdict(paused[-1].turn, paused[-1].speech_s, 0.93)
    assert len(stopped) == 1 and isinstance(stopped[0], SpeechStopped) and stopped[0].kept
    assert stopped[0].at_s == pytest.approx(paused[-1].at_s), "the turn ends where the speech did"
    assert not detector.in_turn


def test_a_pause_is_reported_to_transcribe_at_then_to_ask_at(sentence: np.ndarray) -> None:
    """The recognizer may start after 0.1 s of silence, the end-of-turn model is asked after 0.2 s: the same pause
    (same speech, same end), reported twice, so the words are ready about when the verdict is."""
    detector, audio = _semantic_detector(), np.concatenate([sentence, np.zeros(int(0.3 * 16000), np.float32)])
    paused, silence = [], []  # the pauses, and the silence each came after (the detector's clock then)
    for start in range(0, len(audio), FRAME):
        for event in detector.push(audio[start:start + FRAME]):
            if isinstance(event, SpeechPaused):
                paused.append(event)
                silence.append(detector.now_s - event.at_s)
    last_two = paused[-2:]
    assert [event.ask for event in last_two] == [False, True]
    assert len({(event.turn, event.speech_s, event.at_s) for event in last_two}) == 1
    assert silence[-2] == pytest.approx(0.1, abs=0.02) and silence[-1] == pytest.approx(0.2, abs=0.02)
    assert all(not event.ask for event in paused[:-1]), "only the 0.2 s silence asks the model"
    # server VAD: only the pause to transcribe at; no pause at all when pause_s is 0
    for options, expected in ((TurnOptions(silence_s=0.5), [False]), (TurnOptions(silence_s=0.5, pause_s=0.0), [])):
        detector = TurnDetector(SileroVAD(), options)
        events = _push(detector, np.concatenate([sentence, np.zeros(int(0.6 * 16000), np.float32)]))
        tail = events[events.index(next(e for e in events if isinstance(e, SpeechStopped))) - len(expected):]
        assert [event.ask for event in tail if isinstance(event, SpeechPaused)] == expected


def test_an_unfinished_verdict_waits_and_new_speech_makes_it_stale(sentence: np.ndarray) -> None:
    detector = _semantic_detector()
    events = _push(detector, np.concatenate([sentence, np.zeros(int(0.25 * 16000), np.float32)]))
    paused = [event for event in events if isinstance(event, SpeechPaused)][-1]
    assert detector.verdict(paused.turn, paused.speech_s, 0.1) == []  # wait 0.2 + 3.8 * 0.8 = 3.24 s of silence
    assert not any(isinstance(e, SpeechStopped) for e in _push(detector, np.zeros(2 * 16000, np.float32)))
    later = _push(detector, np.zeros(int(1.2 * 16000), np.float32))
    assert [type(e) for e in later] == [SpeechStopped], "ended once the silence reached the verdict's wait"
    # a verdict on a pause the user spoke after changes nothing
    detector = _semantic_detector()
    first = [e for e in _push(detector, np.concatenate([sentence, np.zeros(4000, np.float32)]))
             if isinstance(e, SpeechPaused)][-1]
    _push(detector, sentence[8000:])  # speaking again
    assert detector.verdict(first.turn, first.speech_s, 0.99) == [] and detector.in_turn


def test_without_a_verdict_the_longest_wait_ends_the_turn(sentence: np.ndarray) -> None:
    detector = _semantic_detector()
    events = _push(detector, np.concatenate([sentence, np.zeros(int(4.2 * 16000), np.float32)]))
    stopped = [event for event in events if isinstance(event, SpeechStopped)]
    assert len(stopped) == 1 and stopped[0].kept


# -- the session: a reply waits for the user's turn ----------------------------------------------------------


def _wait_for(session: Any, seen: list[Any], wanted: str, count: int, timeout: float = 60.0) -> None:
    """Events into `seen` until it holds `count` events of type `wanted`."""
    deadline = time.monotonic() + timeout
    while [event.type for event in seen].count(wanted) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"no {count} x {wanted} in {timeout} s; saw {[event.type for event in seen]}"
        try:
            event = session.next_event(timeout=left)
        except TimeoutError:
            continue
        assert event is not None, "the session closed"
        seen.append(event)


def _live(session: Any, audio: np.ndarray) -> list[Any]:
    """Microphone audio at real time (40 ms chunks); the events that came meanwhile."""
    chunk, seen = RATE // 25, []
    for i in range(0, len(audio), chunk):
        session.append_audio(float_to_pcm16(audio[i:i + chunk]))
        time.sleep(chunk / RATE)
        seen += list(session.events(timeout=0.001))
    return seen


def test_a_reply_waits_while_the_user_goes_on_and_the_answer_hears_both_halves(kit: Any, kokoro_voices: Path) -> None:
    """The user pauses long enough to end a turn, then goes on before the reply has said a word. The reply waits
    (it used to play over the second half), is dropped once the user's words are heard, and the answer is written
    for both halves together. Real VAD, Smart Turn, Whisper and Piper; the chat model is held until the user has
    gone on, so the reply is ready while they speak."""
    from scripted import ScriptedEngine

    import voicekit

    first = with_silence(speech(kit, "Please book a table.", "af_heart", kokoro_voices), 0.3, 0.2)
    second = with_silence(speech(kit, "For four people at eight tonight.", "af_heart", kokoro_voices), 0.0, 1.5)
    engine = ScriptedEngine("Sure, I can book that for you.", hold_after=0)
    with voicekit.load("cpu", engine=engine) as scripted, scripted.realtime() as session:
        seen = _live(session, first)
        _wait_for(session, seen, "response.created", 1, 10)
        going_on = int(0.8 * RATE)  # into the second half: its speech has started
        seen += _live(session, second[:going_on])
        assert [e.type for e in seen].count("input_audio_buffer.speech_started") == 2, [e.type for e in seen]
        engine.release.set()  # the reply to "Please book a table." is written and spoken now, mid-turn
        seen += _live(session, second[going_on:])
        _wait_for(session, seen, "response.done", 2)
    created = [e.data["response"]["id"] for e in seen if e.type == "response.created"]
    done = {e.data["response"]["id"]: e.data["response"] for e in seen if e.type == "response.done"}
    assert len(created) == 2 and set(done) == set(created)
    assert done[created[0]]["status"] == "cancelled", done[created[0]]
    assert done[created[0]]["status_details"]["reason"] == "turn_detected"
    spoke = {e.data["response_id"] for e in seen if e.type == "response.output_audio.delta"}
    assert spoke == {created[1]}, "the first reply said nothing over the user; the answer speaks"
    assert done[created[1]]["status"] == "completed"
    asked = engine.prompts[-1].split("user: ")[-1].lower()  # the answer's prompt: both halves, one user turn
    assert "table" in asked and "people" in asked and "eight" in asked, engine.prompts[-1]


def test_a_reply_held_by_a_cough_speaks_once_it_is_over(kit: Any, kokoro_voices: Path) -> None:
    """A sound too short to be a turn starts one while the reply is being written: the reply waits for it, then
    speaks whole (a turn that never ended the hold would silence the session)."""
    from scripted import ScriptedEngine

    import voicekit

    question = with_silence(speech(kit, "What is the capital of France?", "af_heart", kokoro_voices), 0.3, 0.2)
    spoken = speech(kit, "Four people.", "af_heart", kokoro_voices)
    onset = int(np.argmax(np.abs(spoken) > 0.05))
    cough = with_silence(spoken[onset:onset + int(0.22 * RATE)], 0.3, 1.0)  # ~0.19 s of speech: under min_speech_s
    engine = ScriptedEngine("It is Paris.", hold_after=0)
    with voicekit.load("cpu", engine=engine) as scripted, scripted.realtime() as session:
        seen = _live(session, question)
        _wait_for(session, seen, "response.created", 1, 10)
        seen += _live(session, cough[: int(0.45 * RATE)])
        engine.release.set()
        seen += _live(session, cough[int(0.45 * RATE):])
        _wait_for(session, seen, "response.done", 1, 30)
    types = [event.type for event in seen]
    assert types.count("input_audio_buffer.speech_started") == 2, types  # the cough began a turn...
    assert types.count("input_audio_buffer.committed") == 1, types  # ...too short to be one
    cough_over = len(types) - 1 - types[::-1].index("input_audio_buffer.speech_stopped")
    assert types.index("response.output_audio.delta") > cough_over, "the reply waited for the cough"
    done = next(event for event in seen if event.type == "response.done").data["response"]
    assert done["status"] == "completed" and done["timings"]["audio_sent_s"] > 0.3, done
