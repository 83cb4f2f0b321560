"""Admission control: how many requests a server runs and lets wait, and how long one may take.

Every request that makes audio (the API's `/chat` and `/v1/audio/speech`, the page's chat and speak, a realtime
reply) takes a running slot for as long as it streams, and a transcription while it is heard: one count per
server. When all are taken it waits in line, up to `max_waiting` requests; past that (or after waiting `wait_s`)
it is turned away at once with `Busy`: the API answers 429 with `Retry-After`, the page says "busy, try again".
A client can then tell a busy server from a slow one, instead of queueing without limit. `request_timeout_s`
bounds a whole request, streaming included.

Defaults follow the preset: a cpu kit runs 2 at once (llama.cpp serves one request at a time; Piper speaks the
other) and lets 2 wait, a gpu kit 16 and 32 (vLLM batches them). A short line keeps the first audio of the
requests it answers within a few seconds (docs/BENCHMARKS.md, "Many listeners"); a long one only hides the
wait. Everything here runs on the server's one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

#: preset -> (running, waiting)
PRESET_LIMITS: dict[str, tuple[int, int]] = {"cpu": (2, 2), "laptop": (2, 2), "gpu": (16, 32)}
DEFAULT_TIMEOUT_S = 120.0


class Busy(Exception):
    """The server runs and queues as many requests as it may: try again after `retry_after` seconds."""

    code = "busy"  # the error code clients see (the realtime socket's `error` event)

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Limits:
    """The bounds of one server."""

    running: int
    waiting: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    wait_s: float = 10.0  # longest wait in line for a running slot: past it a client is better told to retry

    @classmethod
    def for_preset(cls, preset: str, running: int | None = None, waiting: int | None = None,
                   timeout_s: float | None = None) -> Limits:
        default_running, default_waiting = PRESET_LIMITS.get(preset, PRESET_LIMITS["cpu"])
        return cls(running or default_running, default_waiting if waiting is None else waiting,
                   timeout_s or DEFAULT_TIMEOUT_S)


class Admission:
    """Running slots and a bounded line for them (create one per server; use it from the server's loop)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running = 0
        self.waiting = 0
        self.turned_away = 0
        self._free: asyncio.Semaphore | None = None  # made on the loop that first uses it
        self._mean_s = 5.0  # a running estimate of how long a request takes, for Retry-After (a guess until one ends)
        self._measured = False

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a running slot for the body of the `async with`; raises `Busy` instead of queueing past the line."""
        await self.enter()
        started = time.monotonic()
        try:
            yield
        finally:
            self.leave(time.monotonic() - started)

    async def enter(self) -> None:
        """Take a running slot, waiting in line when there is room in it; `Busy` otherwise."""
        free = self._free = self._free or asyncio.Semaphore(self.limits.running)
        # Decide and take synchronously: a burst of requests in one loop tick must not all see the same free slot
        # (asyncio.wait_for would run acquire() in a task, a tick later).
        if not free.locked():
            await free.acquire()  # does not suspend: a slot is free
        elif self.waiting >= self.limits.waiting:
            raise self._busy()
        else:
            self.waiting += 1
            try:
                async with asyncio.timeout(self.limits.wait_s):
                    await free.acquire()
            except TimeoutError:
                self.waiting -= 1
                raise self._busy() from None
            self.waiting -= 1
        self.running += 1

    def leave(self, seconds: float) -> None:
        """Give the slot back (`seconds`: how long the request held it)."""
        self.running -= 1
        self._mean_s = 0.8 * self._mean_s + 0.2 * seconds if self._measured else seconds
        self._measured = True
        assert self._free is not None
        self._free.release()

    def _busy(self) -> Busy:
        self.turned_away += 1
        # when a place in line is likely to come free: the line ahead, plus this request, over the running slots
        retry = min(max(1, math.ceil(self._mean_s * (self.waiting + 1) / self.limits.running)),
                    math.ceil(self.limits.timeout_s))
        return Busy(f"the server is busy: {self.running} requests running and {self.waiting} waiting (at most "
                    f"{self.limits.running} and {self.limits.waiting}); try again in {retry} s", retry)

    def as_dict(self) -> dict[str, int | float]:
        """For /health."""
        return {"running": self.running, "waiting": self.waiting, "max_running": self.limits.running,
                "max_waiting": self.limits.waiting, "turned_away": self.turned_away,
                "request_timeout_s": self.limits.timeout_s, "mean_request_s": round(self._mean_s, 2)}
