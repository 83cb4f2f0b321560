"""The one long-lived event loop and its bridges from sync code and from other loops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from voicekit.engines.loop import EventLoopThread


@pytest.fixture()
def loop_thread():
    thread = EventLoopThread()
    yield thread
    thread.close()


def _counting_stream(limit: int, closed: list[str], loops: list[asyncio.AbstractEventLoop]):
    async def stream() -> AsyncIterator[int]:
        loops.append(asyncio.get_running_loop())
        try:
            for number in range(limit):
                await asyncio.sleep(0)
                yield number
        finally:
            closed.append("closed")

    return stream


def test_sync_iteration_runs_every_stream_on_the_same_loop(loop_thread: EventLoopThread) -> None:
    closed: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []
    first = list(loop_thread.iterate(_counting_stream(5, closed, loops)))
    second = list(loop_thread.iterate(_counting_stream(3, closed, loops)))
    assert first == [0, 1, 2, 3, 4] and second == [0, 1, 2]
    assert loops[0] is loops[1] is loop_thread.loop
    assert closed == ["closed", "closed"]


def test_leaving_early_closes_the_producer_before_returning(loop_thread: EventLoopThread) -> None:
    closed: list[str] = []
    stream = loop_thread.iterate(_counting_stream(10_000, closed, []))
    assert next(stream) == 0
    stream.close()
    assert closed == ["closed"]


def test_errors_reach_the_consumer(loop_thread: EventLoopThread) -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise ValueError("boom")

    received = []
    with pytest.raises(ValueError, match="boom"):
        for item in loop_thread.iterate(failing):
            received.append(item)
    assert received == [1]


def test_async_iteration_from_another_loop(loop_thread: EventLoopThread) -> None:
    closed: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def consume() -> list[int]:
        items = []
        async for item in loop_thread.aiterate(_counting_stream(10_000, closed, loops)):
            items.append(item)
            if len(items) == 4:
                break
        return items

    assert asyncio.run(consume()) == [0, 1, 2, 3]
    assert loops == [loop_thread.loop]
    assert closed == ["closed"]


def test_run_returns_results_and_refuses_reentry(loop_thread: EventLoopThread) -> None:
    async def answer() -> int:
        return 42

    assert loop_thread.run(answer()) == 42

    async def nested() -> None:
        loop_thread.run(answer())

    with pytest.raises(RuntimeError, match="own loop"):
        loop_thread.run(nested())
    assert threading.active_count() >= 1
