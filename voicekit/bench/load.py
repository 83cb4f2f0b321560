"""`python -m voicekit bench load --url URL`: many clients against a running server, as listeners would be.

Each client sends its requests one after the other, alternating speech (`POST /v1/audio/speech`, pcm) and chat
(`POST /chat`); every `drop_every`-th request hangs up after its first audio, as a listener who leaves. The
report: HTTP statuses, time to the first audio byte and to the end (percentiles, over answered requests), the
server's memory before and after (`/health` `rss_mb`), and what is still running a few seconds after the last
client is done (`active_requests`, `engine_requests`: both must be 0). Turned-away requests (429) are counted
with the `Retry-After` they got: under admission control they are the expected answer past the server's limits.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx

from voicekit.bench.pipeline import machine_info

SPEECH_TEXT = "Thank you for calling. Every line is busy, but your call matters to us."
CHAT_MESSAGES = ("Hello!", "What is the capital of France?", "Give me one tip for sleeping better.")


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p95, p99 and max of `values` (None when there are none)."""
    if not values:
        return {"p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p90": at(0.9), "p95": at(0.95), "p99": at(0.99),
            "max": round(ordered[-1], 3)}


async def _one(client: httpx.AsyncClient, index: int, drop: bool, max_tokens: int) -> dict[str, Any]:
    speech = index % 2 == 0
    route, body = ("/v1/audio/speech", {"model": "tts-1", "input": SPEECH_TEXT, "response_format": "pcm"}) \
        if speech else ("/chat", {"message": CHAT_MESSAGES[index // 2 % len(CHAT_MESSAGES)], "max_tokens": max_tokens})
    started = time.perf_counter()
    record: dict[str, Any] = {"kind": "speech" if speech else "chat", "dropped": drop}
    try:
        async with client.stream("POST", route, json=body) as response:
            record["status"] = response.status_code
            if response.status_code == 429:
                record["retry_after"] = int(response.headers.get("retry-after", "0") or 0)
            received = 0
            async for piece in response.aiter_bytes():
                received += len(piece)
                if "first_audio_s" not in record and received > (44 if not speech else 0):
                    record["first_audio_s"] = time.perf_counter() - started
                    if drop:
                        break  # hang up: the server must stop this request's work
            record["bytes"] = received
    except httpx.HTTPError as error:
        record["status"], record["error"] = "error", type(error).__name__
    record["total_s"] = time.perf_counter() - started
    return record


async def _client(url: str, headers: dict[str, str], number: int, requests: int, drop_every: int,
                  max_tokens: int, timeout_s: float) -> list[dict[str, Any]]:
    records = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s) as client:
        for index in range(requests):
            sequence = number * requests + index + 1
            drop = drop_every > 0 and sequence % drop_every == 0
            records.append(await _one(client, number + index, drop, max_tokens))
    return records


async def _health(url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        return (await client.get("/health")).json()


async def _settled(url: str, headers: dict[str, str], wait_s: float) -> dict[str, Any]:
    """/health once nothing runs any more, or after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        health = await _health(url, headers)
        if (not health.get("active_requests") and not health.get("engine_requests")) or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.25)


async def _run(url: str, clients: int, requests: int, drop_every: int, api_key: str | None, max_tokens: int,
               timeout_s: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    before = await _health(url, headers)
    started = time.perf_counter()
    batches = await asyncio.gather(*(_client(url, headers, number, requests, drop_every, max_tokens, timeout_s)
                                     for number in range(clients)))
    seconds = time.perf_counter() - started
    after = await _settled(url, headers, 20.0)
    records = [record for batch in batches for record in batch]
    answered = [record for record in records if record.get("status") == 200]
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record.get("status"))] = statuses.get(str(record.get("status")), 0) + 1
    return {
        "machine": machine_info(), "url": url, "clients": clients, "requests_per_client": requests,
        "drop_every": drop_every, "seconds": round(seconds, 1), "server": {"preset": before.get("preset"),
                                                                          "admission": before.get("admission")},
        "statuses": statuses,
        "first_audio_s": percentiles([r["first_audio_s"] for r in answered if "first_audio_s" in r]),
        "total_s": percentiles([r["total_s"] for r in answered if not r["dropped"]]),
        "turned_away": {"count": statuses.get("429", 0),
                        "retry_after_s": percentiles([r["retry_after"] for r in records if "retry_after" in r])},
        "memory_mb": {"before": before.get("rss_mb"), "after": after.get("rss_mb")},
        "left_running": {"active_requests": after.get("active_requests"),
                         "engine_requests": after.get("engine_requests")},
        "requests": records,
    }


def run_load_bench(url: str, clients: int = 8, requests: int = 5, drop_every: int = 5, api_key: str | None = None,
                   max_tokens: int = 48, timeout_s: float = 300.0) -> dict[str, Any]:
    """Run the load and return the JSON-ready report."""
    return asyncio.run(_run(url.rstrip("/"), clients, requests, drop_every, api_key, max_tokens, timeout_s))


def run_soak(url: str, minutes: float = 10.0, clients: int = 8, requests: int = 5, drop_every: int = 5,
             api_key: str | None = None, growth_mb: float = 200.0) -> dict[str, Any]:
    """Rounds of `run_load_bench` until `minutes` have passed; the server's memory after each round.

    `ok` is true when nothing was left running after any round and memory settled: the highest figure of the
    second half of the rounds is within `growth_mb` of the first half's (memory rises and falls with the
    requests in flight, so one reading against another measures the moment; a leak lifts the whole second half).
    """
    deadline = time.monotonic() + minutes * 60
    rounds: list[dict[str, Any]] = []
    while len(rounds) < 2 or time.monotonic() < deadline:
        report = run_load_bench(url, clients, requests, drop_every, api_key)
        rounds.append({"statuses": report["statuses"], "memory_mb": report["memory_mb"]["after"],
                       "left_running": report["left_running"], "first_audio_p95_s": report["first_audio_s"]["p95"],
                       "seconds": report["seconds"]})
    memory = [r["memory_mb"] for r in rounds if r["memory_mb"] is not None]
    leaked = [r for r in rounds if any(r["left_running"].values())]
    half = len(memory) // 2
    grown = round(max(memory[half:]) - max(memory[:half]), 1) if half else None
    return {"machine": machine_info(), "url": url, "minutes": minutes, "rounds": rounds,
            "memory_mb": {"first": memory[0] if memory else None, "last": memory[-1] if memory else None,
                          "max": max(memory) if memory else None, "growth": grown, "bound": growth_mb},
            "ok": not leaked and grown is not None and grown <= growth_mb}
