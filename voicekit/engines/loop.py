"""One long-lived event loop for all engine work, and bridges to it from sync code and other loops.

Engines such as vLLM's AsyncLLM bind themselves to the loop that first uses them, so voicekit never calls
`asyncio.run()` per request. A kit owns one `EventLoopThread`; notebooks and scripts iterate its async
streams synchronously, and the web server (which runs its own loop) iterates them asynchronously. Leaving
a stream early (break, exception, client disconnect) cancels the producer on the engine loop, which
closes the engine iterators and so aborts their requests, before the consumer goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _END = "item", "error", "end"
_CLEANUP_TIMEOUT_S = 30.0


class Channel(Generic[T]):
    """Items handed from producers (worker threads, other loops, tasks) to one async consumer on `loop`.

    Producers call `put`, then `end()`, or `fail(error)` to raise `error` in the consumer; any thread may call
    them. The consumer iterates the channel (`async for item in channel`). Every engine and the loop bridge
    use this one channel instead of a queue and a sentinel each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def _post(self, message: tuple[str, Any]) -> None:  # from any thread
        with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self._queue.put_nowait, message)

    def put(self, item: T) -> None:
        """Hand one item to the consumer."""
        self._post((_ITEM, item))

    def fail(self, error: BaseException) -> None:
        """Make the consumer raise `error`."""
        self._post((_ERROR, error))

    def end(self) -> None:
        """No more items: the consumer's iteration ends."""
        self._post((_END, None))

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        while (message := await self._queue.get())[0] != _END:
            yield _item(message)


class EventLoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str = "voicekit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop from another thread and return its result."""
        if self.in_loop():
            if asyncio.iscoroutine(coro):
                coro.close()  # never awaited: close it so Python does not warn about it later
            raise RuntimeError("EventLoopThread.run() called from its own loop; await the coroutine instead")
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def in_loop(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def iterate(self, make_stream: Callable[[], AsyncIterator[T]]) -> Generator[T, None, None]:
        """Iterate an async stream, created on the loop, from synchronous code."""
        sink = _SyncSink()
        finished = threading.Event()
        future = asyncio.run_coroutine_threadsafe(_produce(make_stream, sink, finished.set), self.loop)
        try:
            while (message := sink.queue.get())[0] != _END:
                yield _item(message)
        finally:
            if not future.done():
                future.cancel()
            finished.wait(_CLEANUP_TIMEOUT_S)

    async def aiterate(self, make_stream: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Iterate an async stream, created on the engine loop, from another event loop."""
        if self.in_loop():
            async with contextlib.aclosing(make_stream()) as stream:
                async for item in stream:
                    yield item
            return
        channel: Channel[T] = Channel()
        finished = asyncio.Event()

        def mark_finished() -> None:
            with contextlib.suppress(RuntimeError):  # the consumer loop may already be closed
                channel.loop.call_soon_threadsafe(finished.set)

        future = asyncio.run_coroutine_threadsafe(_produce(make_stream, channel, mark_finished), self.loop)
        try:
            async for item in channel:
                yield item
        finally:
            if not future.done():
                future.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(finished.wait(), _CLEANUP_TIMEOUT_S)

    def close(self) -> None:
        """Stop the loop and join its thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def _item(message: tuple[str, Any]) -> Any:
    """The item a producer posted, or raise the error it posted instead."""
    kind, value = message
    if kind == _ERROR:
        raise value
    return value


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _SyncSink:
    """The producer side of `iterate()`: the same put/fail/end as a `Channel`, into a thread-safe queue."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()

    def put(self, item: Any) -> None:
        self.queue.put((_ITEM, item))

    def fail(self, error: BaseException) -> None:
        self.queue.put((_ERROR, error))

    def end(self) -> None:
        self.queue.put((_END, None))


async def _produce(make_stream: Callable[[], AsyncIterator[T]], sink: Channel[T] | _SyncSink,
                   mark_finished: Callable[[], None]) -> None:
    try:
        async with contextlib.aclosing(make_stream()) as stream:
            async for item in stream:
                sink.put(item)
        sink.end()
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # delivered to the consumer, which re-raises it
        sink.fail(error)
    finally:
        mark_finished()
