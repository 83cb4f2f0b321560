"""`python -m voicekit bench load` against a real server (the cpu kit in this process), small: the report's
statuses, percentiles and left-running counts are what the docs publish from a bigger run."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from voicekit.bench.load import percentiles
from voicekit.serve import BackgroundServer
from voicekit.serve.admission import Limits
from voicekit.serve.api import create_app

pytestmark = pytest.mark.slow


def test_percentiles() -> None:
    assert percentiles([]) == {"p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.5, "p90": 91.0, "p95": 96.0, "p99": 100.0, "max": 100.0}


def test_bench_load_reports_statuses_latency_memory_and_nothing_left_running(kit: Any, tmp_path) -> None:  # type: ignore[no-untyped-def]
    limits = Limits(running=2, waiting=1, timeout_s=60)
    with BackgroundServer(create_app(kit, limits=limits)) as server:
        out = tmp_path / "load.json"
        result = subprocess.run([sys.executable, "-m", "voicekit", "bench", "load", "--url", server.url,
                                 "--clients", "5", "--requests", "2", "--drop-every", "3", "--json", str(out)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        report = json.loads(out.read_text())
    assert report["clients"] == 5 and len(report["requests"]) == 10
    assert set(report["statuses"]) <= {"200", "429"} and report["statuses"].get("200", 0) >= 3
    assert report["turned_away"]["count"] == report["statuses"].get("429", 0)
    assert report["left_running"] == {"active_requests": 0, "engine_requests": 0}
    assert report["memory_mb"]["before"] > 100 and report["memory_mb"]["after"] > 100
    assert report["first_audio_s"]["p50"] > 0 and report["server"]["admission"]["max_running"] == 2
    dropped = [r for r in report["requests"] if r["dropped"] and r.get("status") == 200]
    assert all("first_audio_s" in r for r in dropped), "a dropped request hung up after its first audio"


def test_a_short_soak_keeps_memory_bounded_and_leaves_nothing_running(kit: Any) -> None:
    from voicekit.bench.load import run_soak

    with BackgroundServer(create_app(kit, limits=Limits(running=2, waiting=4, timeout_s=60))) as server:
        report = run_soak(server.url, minutes=0.1, clients=3, requests=2, drop_every=3)
    assert report["rounds"] and all(not any(r["left_running"].values()) for r in report["rounds"])
    assert report["ok"] and report["memory_mb"]["growth"] <= report["memory_mb"]["bound"]
