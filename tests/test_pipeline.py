"""The whole path on the real bundled models: text or chat -> sentences -> Piper -> audio chunks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voicekit.audio import concat, read_wav, rms_db
from voicekit.chat import normalize_history
from voicekit.errors import EmptyTextError, TextTooLongError, UnknownVoiceError
from voicekit.kit import Kit
from voicekit.pipeline import Pipeline
from voicekit.tts.piper import PiperBackend

EMOJI_REPLY = "Hello! 👋 How can I help you today? 😊"


def test_say_streams_one_sentence_after_another(kit: Kit) -> None:
    reply = kit.say("The first sentence is here. And here is the second one!")
    chunks = list(reply)
    assert [chunk.piece_index for chunk in chunks] == sorted(chunk.piece_index for chunk in chunks)
    assert reply.sentences == ["The first sentence is here.", "And here is the second one!"]
    assert {chunk.sample_rate for chunk in chunks} == {22050}
    audio = reply.audio()
    assert len(audio) == sum(len(chunk.samples) for chunk in chunks)
    assert reply.timings.audio_s == pytest.approx(len(audio) / 22050)
    assert reply.timings.sentences == 2
    assert 0 < reply.timings.ttfa_s <= reply.timings.total_s
    assert reply.timings.rtf is not None and reply.timings.rtf > 0
    assert reply.done


def test_emoji_reply_becomes_two_spoken_sentences(kit: Kit) -> None:
    reply = kit.say(EMOJI_REPLY)
    audio = reply.audio()
    assert reply.sentences == ["Hello!", "How can I help you today?"]
    assert rms_db(audio) > -35


def test_no_audio_is_lost_at_the_start_or_the_end(kit: Kit) -> None:
    """What the pipeline streams for a text is exactly what Piper makes for each sentence on its own."""
    piper = PiperBackend(deterministic=True)
    pipeline = Pipeline(piper)
    turn = pipeline.say_turn("Nothing may be cut from the start. Or from the end!")
    sentences = turn.script
    streamed = concat(chunk.samples for chunk in kit.loop.iterate(lambda: pipeline.run(turn)))
    direct = concat(concat(kit.loop.iterate(lambda s=s: piper.synthesize(s, piper.default_voice)))
                    for s in sentences)
    assert len(sentences) == 2
    assert len(streamed) == len(direct)
    assert np.array_equal(streamed, direct)


def test_say_saves_a_playable_wav(kit: Kit, tmp_path) -> None:
    path = kit.say("Saved to a file.").save(tmp_path / "out.wav")
    samples, rate = read_wav(path)
    assert rate == 22050 and len(samples) > 0.5 * rate


@pytest.mark.parametrize("bad, error", [("", EmptyTextError), ("   \n ", EmptyTextError),
                                        ("😊 👋", EmptyTextError), ("x" * 2001, TextTooLongError)])
def test_bad_text_raises_before_any_audio(kit: Kit, bad: str, error: type) -> None:
    with pytest.raises(error):
        kit.say(bad)


def test_unknown_voice_raises_before_any_audio(kit: Kit) -> None:
    with pytest.raises(UnknownVoiceError, match="en_US-joe-medium"):
        kit.say("Hello there.", voice="tara")
    with pytest.raises(UnknownVoiceError):
        kit.chat("Hello", voice="tara")


@pytest.mark.parametrize("mode", ["sequential", "overlap"])
def test_chat_replies_and_speaks(kit: Kit, mode: str) -> None:
    reply = kit.chat("What is the capital of France?", mode=mode, seed=1)
    audio = reply.audio()
    # Whatever the model wrote (its words differ by CPU): the sentences are the split of its text, the pieces
    # spoken add up to them, and every piece was heard.
    assert reply.text and reply.sentences == kit.pipeline.sentences_for(reply.text)
    assert " ".join(reply.pieces).split() == " ".join(reply.sentences).split()
    assert {chunk.piece_index for chunk in reply.chunks} == set(range(len(reply.pieces)))
    assert rms_db(audio) > -40
    timings = reply.timings
    assert timings.llm_s > 0 and timings.tts_s > 0 and timings.audio_s == pytest.approx(len(audio) / kit.sample_rate)
    assert (timings.sentences, timings.pieces) == (len(reply.sentences), len(reply.pieces))
    assert timings.ttfa_s <= timings.total_s
    if mode == "sequential":
        assert timings.ttfa_s >= timings.llm_s, "sequential speaks only after the reply is written"
    assert reply.history[-2:] == [{"role": "user", "content": "What is the capital of France?"},
                                  {"role": "assistant", "content": reply.text}]


def test_overlap_starts_speaking_before_the_reply_is_written(kit: Kit) -> None:
    reply = kit.chat("Tell me a short story about a cat in four sentences.", mode="overlap", seed=2,
                     max_tokens=160)
    reply.audio()
    if len(reply.pieces) < 2:  # the scripted test in test_schedules.py checks this exactly, whatever the model does
        pytest.skip(f"the model wrote a reply spoken in one piece this time: {reply.text!r}")
    assert reply.timings.ttfa_s < reply.timings.llm_s


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_same_seed_gives_the_same_reply_in_both_modes(kit: Kit, seed: int) -> None:
    """The same seed writes the same text on one machine (not across CPUs); its sentences are the same whichever
    way it was spoken, also when overlap mode spoke its first clause early (issue 19: "...words: white.")."""
    sequential = kit.chat("Name a color.", mode="sequential", seed=seed, first_fragment_chars=8)
    overlap = kit.chat("Name a color.", mode="overlap", seed=seed, first_fragment_chars=8)
    sequential.audio()
    overlap.audio()
    assert sequential.text == overlap.text
    assert sequential.sentences == overlap.sentences == kit.pipeline.sentences_for(sequential.text)
    assert sequential.pieces == sequential.sentences
    assert " ".join(overlap.pieces).split() == " ".join(overlap.sentences).split()


def test_history_is_sent_with_the_next_message(kit: Kit) -> None:
    first = kit.chat("My name is Ada.", seed=1)
    first.audio()
    messages = kit.chat_model.build_messages("What is my name?", normalize_history(first.history))
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1].content == "My name is Ada."


def test_stopping_early_aborts_the_chat_request(kit: Kit) -> None:
    reply = kit.chat("Tell me a long story about a dragon.", mode="overlap", seed=3, max_tokens=200)
    first = next(iter(reply))
    assert first.samples.size > 0
    reply.close()
    assert kit.chat_model.engine.active_requests() == set()


def test_async_chat_from_another_event_loop(kit: Kit) -> None:
    async def talk() -> tuple[int, str]:
        reply = kit.achat("Say hi.", seed=4)
        total = 0
        async for chunk in reply:
            total += len(chunk.samples)
        return total, reply.text

    samples, text = asyncio.run(talk())
    assert samples > 0 and text


def test_async_close_mid_stream_aborts(kit: Kit) -> None:
    async def start_and_leave() -> None:
        reply = kit.achat("Tell me a long story about the moon.", mode="overlap", seed=6, max_tokens=200)
        async for _chunk in reply:
            break
        await reply.aclose()

    asyncio.run(start_and_leave())
    assert kit.chat_model.engine.active_requests() == set()


def test_empty_and_long_messages_are_rejected(kit: Kit) -> None:
    with pytest.raises(EmptyTextError, match="message"):
        kit.chat("  ")
    with pytest.raises(TextTooLongError, match="2000"):
        kit.chat("y" * 2001)
