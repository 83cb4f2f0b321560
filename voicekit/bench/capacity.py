"""`python -m voicekit bench capacity --url URL`: how many listeners and talkers one server takes, measured.

Load rises step by step (`LEVELS`: 1, 2, 3, 4, 6, 8, ... up to `--max-level`), each step held `--step-seconds`:
first chat/speech streams (clients that listen to each reply whole, then ask again), then spoken realtime sessions
(questions streamed through the socket at real time, as people talk; bench talk's helpers). A step is sustained
while every admitted stream plays at real time (its audio never arrives after the listener's player ran out, past
`--gap-tolerance`), p95 first audio stays within the bound (`--p95-factor` times the one-listener figure, or
`--p95-bound` seconds; for sessions, from the end of the user's turn) and nothing is turned away (past that, the
server's own limits are measured, not its capacity: run it with generous ones, e.g. VOICEKIT_MAX_RUNNING=64).
The ramp stops at the first step that fails; the one before is the sustainable level.

capacity.json holds the sustainable streams and sessions, p95 first audio at that step, the server's machine
(its /health `machine`) and preset; `--save` also writes it where `VOICEKIT_MAX_RUNNING=auto` reads it
(voicekit/serve/admission.py, `capacity_path`). A plot of p95 first audio by level goes beside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from voicekit.bench.capacity_clients import session_listener, spoken_questions, stream_listener
from voicekit.bench.load import percentiles
from voicekit.bench.pipeline import machine_info

LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
KINDS = ("streams", "sessions")


@dataclass
class Bound:
    """When a step is no longer sustained."""

    p95_factor: float = 1.5  # p95 first audio past this many times the one-listener p95
    p95_s: float | None = None  # or past this many seconds, when given
    gap_tolerance_s: float = 0.1  # an admitted stream whose gaps add up past this played slower than real time

    def limit(self, one_listener_p95: float | None) -> float | None:
        """The p95 bound in seconds (None until the first step measured one)."""
        if self.p95_s is not None:
            return self.p95_s
        return None if one_listener_p95 is None else round(self.p95_factor * one_listener_p95, 3)


def levels_up_to(max_level: int) -> list[int]:
    """The steps of a ramp to `max_level` (it included)."""
    return [level for level in LEVELS if level < max_level] + [max_level]


def judge(records: list[dict[str, Any]], admitted: Callable[[dict[str, Any]], bool],
          turned_away: Callable[[dict[str, Any]], bool], bound: Bound, limit: float | None) -> dict[str, Any]:
    """A step's figures, and why it is not sustained (None when it is)."""
    answered = [record for record in records if admitted(record)]
    first = percentiles([record["first_audio_s"] for record in answered if record.get("first_audio_s") is not None])
    slow = [record for record in answered if record.get("gap_s", 0.0) > bound.gap_tolerance_s]
    away = sum(1 for record in records if turned_away(record))
    figures = {"requests": len(records), "admitted": len(answered), "turned_away": away,
               "failed": len(records) - len(answered) - away, "first_audio_s": first,
               "slower_than_real_time": len(slow), "max_gap_s": max((r.get("gap_s", 0.0) for r in answered),
                                                                    default=0.0)}
    if away:
        figures["failed_because"] = "turned_away"
    elif len(answered) < len(records) or not answered:
        figures["failed_because"] = "failed"
    elif slow:
        figures["failed_because"] = "slower_than_real_time"
    elif limit is not None and first["p95"] is not None and first["p95"] > limit:
        figures["failed_because"] = "p95_first_audio"
    return figures


async def ramp(kind: str, run_step: Callable[[int], Awaitable[list[dict[str, Any]]]], max_level: int,
               bound: Bound) -> dict[str, Any]:
    """Steps of rising load until one is not sustained: the sustainable level, its p95, every step's figures."""
    admitted = (lambda r: r.get("status") == 200) if kind == "streams" else (lambda r: r.get("status") == "completed")
    turned_away = (lambda r: r.get("status") == 429) if kind == "streams" else \
        (lambda r: r.get("status") == "refused" or "retry_after" in r)
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"sustainable": 0, "p95_first_audio_s": None, "one_listener_p95_s": None,
                              "bound_s": None, "stopped_because": "max_level", "steps": steps}
    for level in levels_up_to(max_level):
        started = time.monotonic()
        records = await run_step(level)
        figures = judge(records, admitted, turned_away, bound, result["bound_s"])
        figures.update(level=level, seconds=round(time.monotonic() - started, 1), records=records)
        steps.append(figures)
        if level == 1 and figures["first_audio_s"]["p95"] is not None:
            result["one_listener_p95_s"] = figures["first_audio_s"]["p95"]
            result["bound_s"] = bound.limit(result["one_listener_p95_s"])
        if "failed_because" in figures:
            result["stopped_because"] = figures["failed_because"]
            break
        result.update(sustainable=level, p95_first_audio_s=figures["first_audio_s"]["p95"])
    return result


async def _streams_step(url: str, headers: dict[str, str], level: int, step_s: float,
                        max_tokens: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + step_s
    batches = await asyncio.gather(*(stream_listener(url, headers, number, deadline, max_tokens)
                                     for number in range(level)))
    return [record for batch in batches for record in batch]


async def _sessions_step(url: str, headers: dict[str, str], questions: list[Any], level: int,
                         step_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + step_s
    batches = await asyncio.gather(*(session_listener(url, headers, questions, number, deadline)
                                     for number in range(level)))
    return [record for batch in batches for record in batch]


async def _health(url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        return (await client.get("/health")).json()


async def _run(url: str, kinds: tuple[str, ...], max_level: int, step_s: float, bound: Bound, api_key: str | None,
               max_tokens: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    health = await _health(url, headers)
    results: dict[str, Any] = {
        "bench": "capacity", "machine": health.get("machine") or machine_info(), "client_machine": machine_info(),
        "preset": health.get("preset"), "url": url, "server": {"admission": health.get("admission"),
                                                               "capacity": health.get("capacity")},
        "max_level": max_level, "step_seconds": step_s, "bound": asdict(bound)}
    if "streams" in kinds:
        results["streams"] = await ramp("streams", lambda level: _streams_step(url, headers, level, step_s,
                                                                               max_tokens), max_level, bound)
    if "sessions" in kinds:
        questions = await spoken_questions(url, headers)
        results["sessions"] = await ramp("sessions", lambda level: _sessions_step(url, headers, questions, level,
                                                                                  step_s), max_level, bound)
    results["sustainable"] = {kind: results[kind]["sustainable"] if kind in results else None for kind in KINDS}
    results["p95_first_audio_s"] = {kind: results[kind]["p95_first_audio_s"] for kind in KINDS if kind in results}
    return results


def run_capacity_bench(url: str, kinds: tuple[str, ...] = KINDS, max_level: int = 32, step_seconds: float = 30.0,
                       bound: Bound | None = None, api_key: str | None = None,
                       max_tokens: int = 48) -> dict[str, Any]:
    """Ramp the load on the server at `url` and return the JSON-ready capacity."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds are {' and '.join(KINDS)}, not {', '.join(sorted(unknown)) or 'none'}")
    return asyncio.run(_run(url.rstrip("/"), tuple(kinds), max(1, max_level), step_seconds, bound or Bound(),
                            api_key, max_tokens))


def plot_capacity(results: dict[str, Any], path: str | Path) -> Path:
    """p95 first audio by level for each kind, the bound dashed: a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for kind, colour in zip(KINDS, ("tab:blue", "tab:orange"), strict=True):
        if kind not in results:
            continue
        steps = [step for step in results[kind]["steps"] if step["first_audio_s"]["p95"] is not None]
        axis.plot([step["level"] for step in steps], [step["first_audio_s"]["p95"] for step in steps], "o-",
                  color=colour, label=f"{kind}: sustainable {results[kind]['sustainable']}")
        if results[kind]["bound_s"] is not None:
            axis.axhline(results[kind]["bound_s"], color=colour, linestyle="--", linewidth=1)
    axis.set_xlabel("concurrent listeners (streams) or talkers (sessions)")
    axis.set_ylabel("p95 first audio (s)")
    axis.set_title(f"voicekit capacity, {results.get('preset')} preset, {results['machine'].get('cpu_count')} cores")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
