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

`VOICEKIT_MAX_RUNNING=auto` takes the running slots (and the open realtime sessions) from a measurement instead:
the capacity file `python -m voicekit bench capacity --save` writes (`capacity_path`: VOICEKIT_CAPACITY_FILE, else
~/.cache/voicekit/capacity-<preset>.json), when it was measured for this preset on this machine; else the
preset's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("voicekit.server")

#: preset -> (running, waiting)
PRESET_LIMITS: dict[str, tuple[int, int]] = {"cpu": (2, 2), "laptop": (2, 2), "gpu": (16, 32)}
DEFAULT_TIMEOUT_S = 120.0
MAX_SESSIONS_PER_SLOT = 4  # open realtime sessions per running slot unless measured: idle listeners cost their VAD
CAPACITY_DIR = Path.home() / ".cache" / "voicekit"


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
    sessions: int | None = None  # open realtime sessions; None: MAX_SESSIONS_PER_SLOT per running slot
    source: str = "preset"  # where `running` came from: preset, configured, or measured (the capacity file)

    @property
    def max_sessions(self) -> int:
        """Realtime sessions the server keeps open at once."""
        return self.sessions or MAX_SESSIONS_PER_SLOT * self.running

    @classmethod
    def for_preset(cls, preset: str, running: int | str | None = None, waiting: int | None = None,
                   timeout_s: float | None = None, capacity_file: str = "") -> Limits:
        """The preset's limits, with what is given instead; `running="auto"`: the measured capacity when the capacity
        file holds one for this preset and machine (`capacity_file`, default `capacity_path(preset)`)."""
        default_running, default_waiting = PRESET_LIMITS.get(preset, PRESET_LIMITS["cpu"])
        waiting = default_waiting if waiting is None else waiting
        timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        if running == "auto":
            path = capacity_path(preset, capacity_file)
            measured = measured_capacity(path, preset)
            if measured is not None:
                return cls(measured[0], waiting, timeout_s, sessions=measured[1], source=f"measured ({path})")
            return cls(default_running, waiting, timeout_s, source=f"preset (no capacity measured at {path})")
        if isinstance(running, str):
            raise ValueError(f"max_running must be a whole number or 'auto', not {running!r}")
        return cls(running or default_running, waiting, timeout_s, source="configured" if running else "preset")


# -- a measured capacity (voicekit/bench/capacity.py writes it) ----------------------------------------------


def capacity_path(preset: str, configured: str = "", env: Mapping[str, str] | None = None) -> Path:
    """Where the capacity of `preset` on this machine is kept: `configured`, else VOICEKIT_CAPACITY_FILE, else
    ~/.cache/voicekit/capacity-<preset>.json."""
    chosen = configured or (os.environ if env is None else env).get("VOICEKIT_CAPACITY_FILE", "")
    return Path(chosen).expanduser() if chosen else CAPACITY_DIR / f"capacity-{preset}.json"


def machine_identity() -> dict[str, Any]:
    """What a capacity was measured on (the benchmarks' machine facts, and the GPU's name where one is in use),
    compared by `same_machine`."""
    from voicekit.device import gpu_memory, machine_facts

    memory = gpu_memory(import_torch=False)
    return {**machine_facts(), "gpu": memory.name if memory is not None else None}


def same_machine(measured: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    """The same processor and core count (and GPU, when both name one): the Python or kernel version may differ."""
    gpus = (measured.get("gpu"), here.get("gpu"))
    return (measured.get("processor"), measured.get("cpu_count")) == (here.get("processor"), here.get("cpu_count")) \
        and (None in gpus or gpus[0] == gpus[1])


def measured_capacity(path: Path, preset: str) -> tuple[int, int | None] | None:
    """(running slots, realtime sessions or None) from a capacity file measured for `preset` on this machine; None
    when there is none, it is unreadable, or it was measured elsewhere (logged: the preset's defaults apply)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        streams = int(data["sustainable"]["streams"])
        sessions = data["sustainable"].get("sessions")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("voicekit: capacity file %s unreadable (%s): the preset's limits apply", path, error)
        return None
    if data.get("preset") != preset or not same_machine(data.get("machine") or {}, machine_identity()):
        log.warning("voicekit: capacity file %s was measured for preset %s on %s, not here: the preset's limits "
                    "apply", path, data.get("preset"), (data.get("machine") or {}).get("processor"))
        return None
    if streams < 1:
        log.warning("voicekit: capacity file %s: not one stream was sustainable; running 1 at a time", path)
    return max(1, streams), None if sessions is None else max(1, int(sessions))


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

    def remaining(self, open_sessions: int) -> dict[str, Any]:
        """What this server can still take (for /health and a load balancer in front of several): free running
        slots, free places in line, realtime sessions it would still open, and where the limits came from."""
        return {"streams": max(0, self.limits.running - self.running),
                "waiting": max(0, self.limits.waiting - self.waiting),
                "sessions": max(0, self.limits.max_sessions - open_sessions),
                "max_sessions": self.limits.max_sessions, "source": self.limits.source}
