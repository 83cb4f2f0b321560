"""The pipeline's two schedules, exactly, on a scripted engine and backend (tests/scripted.py): no model runs.

The same behaviour on the real bundled models is in tests/test_pipeline.py; here the order of events can be
asserted word for word, and a held engine shows what overlap mode promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import numpy as np
import pytest
from scripted import SAMPLES_PER_CHAR, ScriptedBackend, ScriptedEngine, first_index, kit_over

from voicekit.errors import EmptyTextError, UnknownVoiceError
from voicekit.kit import Kit

REPLY = "One two. Three four five! Six?"
SENTENCES = ["One two.", "Three four five!", "Six?"]


def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_sequential_writes_the_whole_reply_before_the_first_sentence_is_spoken() -> None:
    events: list[str] = []
    with kit_over(ScriptedEngine(REPLY, events), ScriptedBackend(events)) as kit:
        reply = kit.chat("Hi", mode="sequential")
        chunks = list(reply)
    assert events.index("wrote Six?") < first_index(events, "spoke"), events
    assert [e for e in events if e.startswith("spoke")] == [f"spoke {s}" for s in SENTENCES]
    assert reply.text == REPLY and reply.sentences == SENTENCES and reply.pieces == SENTENCES and reply.done
    assert [c.piece_index for c in chunks] == [0, 0, 1, 1, 2, 2]
    assert sum(c.samples.size for c in chunks) == SAMPLES_PER_CHAR * sum(len(s) for s in SENTENCES)
    assert reply.timings.llm_s <= reply.timings.ttfa_s <= reply.timings.total_s


def test_overlap_speaks_the_first_sentence_while_the_model_is_still_writing() -> None:
    events: list[str] = []
    engine = ScriptedEngine(REPLY, events, hold_after=3)  # holds after "One two. Three"
    with kit_over(engine, ScriptedBackend(events)) as kit:
        reply = kit.chat("Hi", mode="overlap")
        stream = iter(reply)
        first = next(stream)
        assert first.piece == "One two." and first.piece_index == 0
        assert not reply.done and reply.text == "One two. Three " and engine.active_requests()
        assert "wrote four" not in events, "the engine is held: audio came before the reply was written"
        engine.release.set()
        rest = list(stream)
    assert reply.sentences == SENTENCES and reply.text == REPLY
    assert events.index("spoke One two.") < events.index("wrote four")
    assert 0 < reply.timings.ttfa_s < reply.timings.llm_s
    assert len(rest) == 5 and engine.active_requests() == set()


class HoldingEngine(ScriptedEngine):
    """A scripted engine that notes when the pipeline holds it (`EngineBase.held`: a CPU engine waits then)."""

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.events.append("held")
        try:
            yield
        finally:
            self.events.append("released")


def test_overlap_holds_a_cpu_chat_model_while_the_first_audio_is_made() -> None:
    """The user waits for the first piece's audio: the chat model leaves it the cores, once, and only that long."""
    events: list[str] = []
    with kit_over(HoldingEngine(REPLY, events), ScriptedBackend(events)) as kit:
        reply = kit.chat("Hi", mode="overlap")
        reply.audio()
    assert events.count("held") == events.count("released") == 1
    assert events.index("held") < events.index("spoke One two.") < events.index("released")
    assert reply.text == REPLY and [c.piece_index for c in reply.chunks] == [0, 0, 1, 1, 2, 2], "no audio lost"
    events.clear()
    with kit_over(HoldingEngine(REPLY, events), ScriptedBackend(events)) as kit:
        kit.chat("Hi", mode="sequential").audio()
    assert "held" not in events, "sequential: the reply is written before anything is spoken"


def test_overlap_can_cut_the_first_clause_early() -> None:
    events: list[str] = []
    with kit_over(ScriptedEngine("Well, that is a long first sentence. Short.", events), ScriptedBackend(events),
                  first_fragment_chars=4) as kit:
        reply = kit.chat("Hi", mode="overlap")
        reply.audio()
    chunks = reply.chunks
    assert reply.pieces == ["Well,", "that is a long first sentence.", "Short."]
    assert [event for event in events if event.startswith("spoke")] == [f"spoke {p}" for p in reply.pieces]
    assert reply.sentences == ["Well, that is a long first sentence.", "Short."], "sentences stay sentences"
    assert [c.piece for c in chunks] == ["Well,", "Well,", "that is a long first sentence.",
                                         "that is a long first sentence.", "Short.", "Short."]
    assert (reply.timings.sentences, reply.timings.pieces) == (2, 3)


@pytest.mark.parametrize("reply_text, sentences", [
    ("A simple color with a few words: white.", ["A simple color with a few words: white."]),
    ("Red; or, if you like, a deep blue: the sky. Green!", ["Red; or, if you like, a deep blue: the sky.", "Green!"]),
])
def test_a_reply_has_the_same_sentences_in_every_mode(reply_text: str, sentences: list[str]) -> None:
    """Overlap mode may speak the first clause early (issue 19: the colon cut the sentence in two): the reply's
    sentences are the same split of its text as in sequential mode; only `pieces` shows the early clause."""
    replies = {}
    for mode in ("sequential", "overlap"):
        with kit_over(ScriptedEngine(reply_text), ScriptedBackend(), first_fragment_chars=6) as kit:
            replies[mode] = kit.chat("Name a color.", mode=mode)
            replies[mode].audio()
    sequential, overlap = replies["sequential"], replies["overlap"]
    assert sequential.text == overlap.text == reply_text
    assert sequential.sentences == overlap.sentences == sentences
    assert sequential.pieces == sentences
    assert len(overlap.pieces) == len(sentences) + 1, overlap.pieces
    assert " ".join(overlap.pieces) == " ".join(sentences), "the pieces are the sentences, the first cut in two"
    assert sequential.timings.sentences == overlap.timings.sentences == len(sentences)


def test_closing_a_reply_aborts_the_engine_and_the_speech_stream() -> None:
    events: list[str] = []
    engine = ScriptedEngine(REPLY, events, hold_after=3)
    with kit_over(engine, ScriptedBackend(events)) as kit:
        reply = kit.chat("Hi", mode="overlap")
        next(iter(reply))
        reply.close()
        wait_until(lambda: engine.aborted)
        assert engine.active_requests() == set()
        assert [event for event in events if event.startswith("spoke")] == ["spoke One two."], "nothing after it"
        assert reply.done, "a stopped turn is finished (its timings are final)"


def test_async_reply_is_its_own_iterator_with_one_aclose() -> None:
    events: list[str] = []
    engine = ScriptedEngine(REPLY, events, hold_after=3)
    with kit_over(engine, ScriptedBackend(events)) as kit:
        async def talk() -> tuple[bool, int]:
            reply = kit.achat("Hi", mode="overlap")
            assert reply.__aiter__() is reply
            async for chunk in reply:
                assert chunk.piece_index == 0
                break
            await reply.aclose()
            await reply.aclose()  # closing twice is harmless
            return reply.done, len(reply.chunks)

        done, received = asyncio.run(talk())
        wait_until(lambda: not engine.active_requests())
    assert done and received == 1 and engine.aborted


def test_history_reaches_the_engine_once_in_alternating_form() -> None:
    engine = ScriptedEngine("Fine.")
    with kit_over(engine, ScriptedBackend(), system_prompt="Be brief.") as kit:
        first = kit.chat("Hello", history=[{"role": "assistant", "content": "Welcome!"}])
        first.audio()
        second = kit.chat("And you?", history=[*first.history, {"role": "user", "content": "Still there?"}])
        second.audio()
    assert engine.prompts[0] == "system: Be brief.\nuser: Hello"
    assert engine.prompts[1] == ("system: Be brief.\nuser: Hello\nassistant: Fine.\nuser: Still there?\n\nAnd you?")
    assert second.history[-2:] == [{"role": "user", "content": "And you?"}, {"role": "assistant", "content": "Fine."}]


def test_input_and_voice_are_checked_once_before_any_audio() -> None:
    backend = ScriptedBackend()
    with kit_over(ScriptedEngine("Yes."), backend) as kit:
        with pytest.raises(UnknownVoiceError, match="nobody"):
            kit.say("Hello.", voice="nobody")
        with pytest.raises(EmptyTextError):
            kit.chat("   ")
        with pytest.raises(ValueError, match="mode must be one of sequential, overlap"):
            kit.chat("Hi", mode="parallel")
        reply = kit.say("Hello there.", voice="Robert")  # an alias, resolved once
        assert reply.voice == "bob" and np.all(reply.audio() < 0)
    assert backend.events == ["spoke Hello there."]


def test_load_takes_a_users_own_engine_and_backend() -> None:
    engine, backend = ScriptedEngine("Hi!"), ScriptedBackend()
    kit = kit_over(engine, backend)
    try:
        assert isinstance(kit, Kit) and kit.tts is backend and kit.chat_model.engine is engine
        assert kit.voices == ["ada", "bob"] and kit.sample_rate == 1000
        assert kit.description["chat"] == "script on scripted" and kit.description["tts"].startswith("scripted")
    finally:
        kit.close()
    assert engine.failure is not None and asyncio.run(engine.failure()) == "the scripted engine for script is closed"


def test_a_turn_stops_at_its_time_limit_and_aborts_the_engine() -> None:
    events: list[str] = []
    engine = ScriptedEngine(REPLY, events, hold_after=3)  # never released: only the time limit ends it
    with kit_over(engine, ScriptedBackend(events)) as kit:
        started = time.monotonic()
        reply = kit.chat("Hi", mode="overlap", time_limit_s=0.3)
        chunks = list(reply)
        assert 0.25 < time.monotonic() - started < 5.0
        assert reply.turn.timed_out and reply.done and [c.piece for c in chunks] == ["One two.", "One two."]
        assert reply.text == "One two. Three" and reply.sentences == ["One two.", "Three"], "what was written"
        wait_until(lambda: engine.aborted != [])
        assert engine.active_requests() == set()
        later = kit.say("Fine.", time_limit_s=5)
        later.audio()
        assert not later.turn.timed_out, "a later turn starts afresh"
