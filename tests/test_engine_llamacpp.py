"""The llama.cpp engine on the bundled SmolLM2 GGUF: streaming, stop, length, abort, templates."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from voicekit.engines import llamacpp
from voicekit.engines.base import ChatMessage, SamplingSettings, new_request_id
from voicekit.kit import Kit

GREETING = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Say hello to me.")]


@pytest.fixture(scope="module")
def engine(kit: Kit):
    return kit.chat_model.engine


def _collect(kit: Kit, make) -> list:
    return list(kit.loop.iterate(make))


def test_chat_template_comes_from_the_gguf(kit: Kit, engine) -> None:
    prompt = kit.loop.run(engine.render_chat(GREETING))  # the protocol's (async) form
    assert prompt == engine.chat_prompt(GREETING)
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_streams_text_with_token_ids_and_stops_at_end_of_turn(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt(GREETING)
    max_tokens = 400  # far more than a greeting takes: the reply ends at its end-of-turn token
    deltas = _collect(kit, lambda: engine.generate(prompt, SamplingSettings(max_tokens=max_tokens, seed=3)))
    assert all(len(delta.token_ids) == 1 for delta in deltas), "one delta per token: the reply streams"
    # whatever the model wrote (its words differ by CPU): it ended at its end of turn, or at max_tokens
    assert deltas[-1].finished and deltas[-1].finish_reason == ("length" if len(deltas) == max_tokens else "stop")
    assert not any(delta.finished for delta in deltas[:-1])
    text = "".join(delta.text for delta in deltas)
    assert text.strip() and "<|im_end|>" not in text


def test_max_tokens_ends_with_length(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt([ChatMessage("user", "Write a long essay about the history of Rome.")])
    deltas = _collect(kit, lambda: engine.generate(prompt, SamplingSettings(max_tokens=5, seed=1)))
    assert len(deltas) == 5
    assert deltas[-1].finish_reason == "length"


def test_same_seed_same_reply(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt(GREETING)

    def reply() -> str:
        deltas = _collect(kit, lambda: engine.generate(prompt, SamplingSettings(max_tokens=30, seed=7)))
        return "".join(delta.text for delta in deltas)

    assert reply() == reply()


def test_stop_strings_cut_the_text(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt([ChatMessage("user", "Write the numbers 1, 2, 3, 4, 5 separated by commas.")])
    sampling = SamplingSettings(max_tokens=40, temperature=0.0, stop=("3",))
    deltas = _collect(kit, lambda: engine.generate(prompt, sampling))
    text = "".join(delta.text for delta in deltas)
    assert "3" not in text and deltas[-1].finish_reason in ("stop", "length")


def test_abort_by_id_stops_the_request_and_the_engine_serves_the_next(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt([ChatMessage("user", "Tell me a long story about the sea.")])
    request_id = new_request_id("test")

    async def run_and_abort() -> list:
        deltas = []
        async for delta in engine.generate(prompt, SamplingSettings(max_tokens=400), request_id):
            deltas.append(delta)
            if len(deltas) == 3:
                assert request_id in engine.active_requests()
                await engine.abort(request_id)
        return deltas

    deltas = kit.loop.run(run_and_abort())
    assert deltas[-1].finish_reason == "abort"
    assert len(deltas) < 10, "abort must stop generation within a token or two"
    assert engine.active_requests() == set()
    follow_up = _collect(kit, lambda: engine.generate(prompt, SamplingSettings(max_tokens=3)))
    assert follow_up[-1].finish_reason == "length"


def test_closing_the_iterator_aborts(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt([ChatMessage("user", "Tell me a long story about mountains.")])
    stream = kit.loop.iterate(lambda: engine.generate(prompt, SamplingSettings(max_tokens=400)))
    next(stream)
    next(stream)
    stream.close()
    assert engine.active_requests() == set()


def test_a_request_closed_mid_reply_stops_before_the_next_one_decodes(kit: Kit, engine) -> None:
    """A reply cut after a few tokens (a barge-in) and the next request at once (another session's reply, the next
    turn): the next one decodes only once the cut one's worker has stopped. Two decoding on one Llama crashed the
    whole process (a segmentation fault), found when the lock let the next in before the worker had ended."""
    prompt = engine.chat_prompt([ChatMessage("user", "Tell me a long story about mountains.")])

    async def cut_then_next() -> list:
        for _ in range(4):
            async with contextlib.aclosing(engine.generate(prompt, SamplingSettings(max_tokens=400))) as deltas:
                for _ in range(3):
                    await anext(deltas)
        return [delta async for delta in engine.generate(prompt, SamplingSettings(max_tokens=6, seed=2))]

    last = kit.loop.run(cut_then_next(), timeout=120)
    assert len(last) == 6 and last[-1].finish_reason == "length"
    assert engine.active_requests() == set()


def test_held_generation_waits_between_tokens_and_goes_on_after(kit: Kit, engine) -> None:
    """While a reply's first speech is made (`held()`), the model writes nothing, so the voice has the cores; it
    goes on after, a cut reply still ends at once, and a hold never lasts past MAX_HOLD_S."""
    prompt = engine.chat_prompt([ChatMessage("user", "Tell me a long story about mountains.")])

    async def story() -> tuple[list[float], float, float, float]:
        times: list[float] = []

        async def read() -> None:
            async for _ in engine.generate(prompt, SamplingSettings(max_tokens=60)):
                times.append(time.perf_counter())

        reading = asyncio.ensure_future(read())
        while not times:
            await asyncio.sleep(0.01)
        with engine.held():
            held_at = time.perf_counter()
            await asyncio.sleep(0.6)
            released_at = time.perf_counter()
        await asyncio.wait_for(reading, 60)
        with engine.held():  # a hold no one releases in time: generation goes on after MAX_HOLD_S
            began = time.perf_counter()
            tokens = [delta async for delta in engine.generate(prompt, SamplingSettings(max_tokens=3))]
            waited = time.perf_counter() - began
        assert len(tokens) == 3
        with engine.held():  # cut while held (a barge-in as the first audio is made): it ends at once
            stream = engine.generate(prompt, SamplingSettings(max_tokens=60))
            await anext(stream)
            await asyncio.sleep(0.1)
            cut_at = time.perf_counter()
            await stream.aclose()
            assert time.perf_counter() - cut_at < 0.5
        return times, held_at, released_at, waited

    times, held_at, released_at, waited = kit.loop.run(story(), timeout=120)
    during = [at for at in times if held_at + 0.1 < at < released_at]  # the token under way may still come
    assert not during, "held: the model writes nothing"
    assert len([at for at in times if at >= released_at]) >= 40, "released: the reply goes on to its end"
    assert llamacpp.MAX_HOLD_S * 0.9 <= waited <= llamacpp.MAX_HOLD_S * 2 + 5
    assert engine.active_requests() == set()


def test_concurrent_requests_queue_instead_of_colliding(kit: Kit, engine) -> None:
    prompt = engine.chat_prompt(GREETING)

    async def both() -> list[list]:
        async def one(seed: int) -> list:
            return [delta async for delta in engine.generate(prompt, SamplingSettings(max_tokens=12, seed=seed))]

        return await asyncio.gather(one(1), one(1))

    first, second = kit.loop.run(both())
    assert [d.token_ids for d in first] == [d.token_ids for d in second]


def test_request_ids_are_unique() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_prompt_longer_than_the_context_is_a_clear_error(kit: Kit, engine) -> None:
    from voicekit.errors import VoicekitError

    too_long = "word " * (engine.n_ctx + 10)
    with pytest.raises(VoicekitError, match="context holds"):
        _collect(kit, lambda: engine.generate(too_long, SamplingSettings(max_tokens=3)))


def test_builds_with_amx_load_without_the_amx_weight_buffers(engine) -> None:
    """AMX buffers crash the first matmul on some Sapphire Rapids hosts (llama.cpp#20824): off where AMX is on."""
    import llama_cpp

    from voicekit.engines.llamacpp import has_amx

    assert has_amx("CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 | ")
    assert not has_amx("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 | ")
    amx = has_amx(llama_cpp.llama_print_system_info().decode())
    assert engine._llm.model_params.use_extra_bufts is (not amx)
    assert llama_cpp.llama_model_default_params().use_extra_bufts, "the library's own defaults are left as they were"


def test_the_prompt_is_read_on_the_threads_that_write(engine) -> None:
    """llama-cpp-python reads a prompt on every core unless told; inside a session that only took a core from the
    microphone, the echo canceller and the voice (docs/BENCHMARKS.md, "Talking in a room")."""
    params = engine._llm.context_params
    assert params.n_threads_batch == params.n_threads == engine._llm.n_threads
