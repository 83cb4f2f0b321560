"""`python -m voicekit bench capacity` against a real server on the cpu kit (a very short ramp), and
`VOICEKIT_MAX_RUNNING=auto` reading what it measured: the measured limit on this machine, the preset's elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import voicekit_cli

from voicekit.bench.capacity import Bound, judge, levels_up_to
from voicekit.bench.capacity_clients import Playback
from voicekit.serve import BackgroundServer
from voicekit.serve.admission import Limits, capacity_path, machine_identity
from voicekit.serve.api import create_app
from voicekit.settings import ServeSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generous(kit: Any) -> Iterator[BackgroundServer]:
    """Limits well past what two cores sustain: the bench measures the machine, not the server's own limits."""
    with BackgroundServer(create_app(kit, limits=Limits(running=16, waiting=0))) as server:
        yield server


def test_bench_capacity_ramps_and_writes_what_auto_reads(generous: BackgroundServer, kit: Any,
                                                        tmp_path: Path) -> None:
    saved = tmp_path / "measured" / "capacity-cpu.json"
    result = voicekit_cli("bench", "capacity", "--url", generous.url, "--max-level", "2", "--step-seconds", "3",
                          "--json", "capacity.json", "--save", cwd=tmp_path,
                          env={"VOICEKIT_CAPACITY_FILE": str(saved)})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert json.loads(saved.read_text()) == report and (tmp_path / "capacity.png").stat().st_size > 5_000
    assert report["preset"] == "cpu" and report["machine"] == machine_identity()
    for kind in ("streams", "sessions"):
        ramp = report[kind]
        first = ramp["steps"][0]
        assert first["level"] == 1 and first["admitted"] >= 1 and first["turned_away"] == 0, first
        assert len(first["records"]) == first["requests"] and all("gap_s" in r for r in first["records"])
        assert 0 < first["first_audio_s"]["p50"] < 30 and ramp["one_listener_p95_s"] == first["first_audio_s"]["p95"]
        assert ramp["bound_s"] == round(1.5 * ramp["one_listener_p95_s"], 3)
        assert 0 <= ramp["sustainable"] <= 2 and len(ramp["steps"]) <= 2
        assert report["sustainable"][kind] == ramp["sustainable"]
        if ramp["sustainable"] < 2:  # a ramp stops at a step that failed, and says why
            assert ramp["stopped_because"] == ramp["steps"][-1]["failed_because"]
    limits = Limits.for_preset("cpu", "auto", capacity_file=str(saved))
    assert limits.running == max(1, report["sustainable"]["streams"]) and limits.source.startswith("measured")
    assert limits.max_sessions == max(1, report["sustainable"]["sessions"])
    with BackgroundServer(create_app(kit, limits=limits)) as server:
        capacity = httpx.get(f"{server.url}/health").json()["capacity"]
    assert capacity["streams"] == limits.running and capacity["sessions"] == limits.max_sessions
    assert capacity["source"] == f"measured ({saved})"


def test_auto_falls_back_to_the_preset_without_a_measurement_for_this_machine(tmp_path: Path) -> None:
    path = tmp_path / "capacity-cpu.json"
    fallback = Limits.for_preset("cpu", "auto", capacity_file=str(path))
    assert (fallback.running, fallback.waiting, fallback.max_sessions) == (2, 2, 8)
    assert fallback.source.startswith("preset (no capacity measured")
    measured = {"preset": "cpu", "machine": machine_identity(), "sustainable": {"streams": 3, "sessions": 5}}
    path.write_text(json.dumps(measured))
    limits = Limits.for_preset("cpu", "auto", capacity_file=str(path))
    assert (limits.running, limits.waiting, limits.max_sessions) == (3, 2, 5)
    assert Limits.for_preset("cpu", "auto", 1, capacity_file=str(path)).waiting == 1
    elsewhere = {**measured, "machine": {**measured["machine"], "cpu_count": 512}}
    path.write_text(json.dumps(elsewhere))
    assert Limits.for_preset("cpu", "auto", capacity_file=str(path)).running == 2, "another machine's figure"
    path.write_text(json.dumps({**measured, "preset": "gpu"}))
    assert Limits.for_preset("cpu", "auto", capacity_file=str(path)).running == 2, "another preset's figure"
    path.write_text("{not json")
    assert Limits.for_preset("cpu", "auto", capacity_file=str(path)).running == 2
    assert Limits.for_preset("cpu", 3) == Limits(3, 2, source="configured")
    assert capacity_path("gpu", env={}).name == "capacity-gpu.json"
    assert capacity_path("gpu", env={"VOICEKIT_CAPACITY_FILE": str(path)}) == path
    settings = ServeSettings.resolve(env={"VOICEKIT_MAX_RUNNING": "auto", "VOICEKIT_CAPACITY_FILE": str(path)})
    assert (settings.max_running, settings.capacity_file) == ("auto", str(path))


def test_a_player_hears_gaps_and_a_step_is_judged_by_them() -> None:
    player = Playback()
    for seconds, at in ((0.5, 10.0), (0.5, 10.4), (0.5, 11.3)):  # the last arrives 0.3 s after the player ran dry
        player.arrive(seconds, at)
    assert round(player.gap_s, 3) == 0.3 and player.queued_s == 1.5
    bound = Bound()
    quick = [{"status": 200, "first_audio_s": 0.4, "gap_s": 0.0}, {"status": 200, "first_audio_s": 0.5, "gap_s": 0.05}]
    assert "failed_because" not in judge(quick, lambda r: r["status"] == 200, lambda r: r["status"] == 429, bound, 1.0)
    slow = [*quick, {"status": 200, "first_audio_s": 0.5, "gap_s": 0.3}]
    assert judge(slow, lambda r: r["status"] == 200, lambda r: False, bound, 1.0)["failed_because"] == \
        "slower_than_real_time"
    late = [*quick, {"status": 200, "first_audio_s": 1.6, "gap_s": 0.0}]
    assert judge(late, lambda r: r["status"] == 200, lambda r: False, bound, 1.0)["failed_because"] == \
        "p95_first_audio"
    busy = [*quick, {"status": 429}]
    assert judge(busy, lambda r: r["status"] == 200, lambda r: r["status"] == 429, bound, 1.0)["failed_because"] == \
        "turned_away"
    assert levels_up_to(10) == [1, 2, 3, 4, 6, 8, 10] and levels_up_to(1) == [1]
