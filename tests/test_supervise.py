"""runpod/supervise.py, the pod's supervisor (and pod_process.py, pod_status.py, pod_setup.py and pod_supervisor.py,
the modules it is made of), in-process: its parts (backoff, the gpu preset's failure count, the
install marker, download progress from the Hugging Face cache, the status page), the supervisor itself running
in a thread (restarts with backoff while its status page holds the port, the health watch stopping a hung app),
and what app.py and the page do for it (the port handover, the status line). tests/test_runpod.py runs the whole
pod through start.sh, with fakes for pip, nvidia-smi, the GPU checks and the hub."""

from __future__ import annotations

import importlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_runpod import _free_port, _get, _load, _session_pids, _stand_ins

ROOT = Path(__file__).resolve().parent.parent

supervise = _load("supervise")  # puts runpod/ on sys.path: the modules it is made of import each other by name
pod_process = importlib.import_module("pod_process")
pod_status = importlib.import_module("pod_status")


def test_backoff_doubles_to_a_cap_and_starts_again_after_a_steady_run() -> None:
    backoff = pod_process.Backoff()
    assert [backoff.next(ran_s=0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.next(ran_s=61) == 1 and backoff.next(ran_s=3) == 2
    backoff.reset()
    assert backoff.next(ran_s=0) == 1


def test_the_gpu_preset_is_given_up_after_three_quick_failures_in_a_row() -> None:
    failures = pod_process.GpuFailures()
    assert not failures.record(1, ran_s=10) and not failures.record(143, ran_s=600)
    assert not failures.record(0, ran_s=5)  # a clean exit breaks the row
    assert not failures.record(1, ran_s=5) and not failures.record(1, ran_s=2000)  # ran over 30 min: not counted
    assert [failures.record(1, ran_s=5) for _ in range(3)] == [False, False, True]


def test_install_marker_holds_one_line_per_installed_requirements_file(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "requirements-gpu.txt").write_text("-r requirements.txt\nvllm\n")
    marker = tmp_path / "venv" / ".voicekit-installed"
    marker.parent.mkdir()
    installs = pod_process.Installs(tmp_path, marker)
    cpu, gpu = tmp_path / "requirements.txt", tmp_path / "requirements-gpu.txt"
    assert not installs.done(cpu) and not installs.done(gpu)
    installs.record(cpu)
    assert installs.done(cpu) and not installs.done(gpu)
    # the Dockerfile's and the old start.sh's marker: one hash of the file and requirements.txt
    marker.write_text(installs.digest(gpu) + "\n")
    assert installs.done(gpu) and installs.done(cpu)  # the gpu set includes the cpu one
    installs.record(cpu)
    assert set(marker.read_text().split()) == {installs.digest(cpu), installs.digest(gpu)}
    gpu.write_text("-r requirements.txt\nvllm==0.33\n")  # changed requirements: install again
    assert not installs.done(gpu) and installs.done(cpu) is True
    installs.record(gpu)
    assert set(marker.read_text().split()) == {installs.digest(cpu), installs.digest(gpu)}


def test_download_progress_counts_the_bytes_in_the_hugging_face_cache(tmp_path: Path) -> None:
    assert pod_status.amount(1_200_000_000, 6_200_000_000) == "1.2/6.2 GB"
    assert pod_status.amount(340_000_000, None) == "340.0 MB" and pod_status.amount(7, 9) == "7/9 B"
    assert pod_status.duration(45) == "45 s" and pod_status.duration(200) == "3 min 20 s"
    blobs = tmp_path / "models--acme--speech" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "aaa").write_bytes(b"x" * 1500)
    (blobs / "bbb.incomplete").write_bytes(b"x" * 500)  # a download under way counts
    (tmp_path / "models--acme--chat" / "blobs").mkdir(parents=True)
    (tmp_path / "models--acme--chat" / "blobs" / "ccc").write_bytes(b"x" * 3000)
    sizes = {"acme/chat": 3000, "acme/speech": 6000, "acme/snac": 1000}
    repos = ["acme/chat", "acme/speech", "acme/snac"]
    assert pod_status.hub_progress(repos, sizes, tmp_path) == "5.0/10.0 KB (acme/speech: 2.0/6.0 KB)"
    assert pod_status.hub_progress(repos, {**sizes, "acme/snac": None}, tmp_path) == "5.0 KB (acme/speech: 2.0/6.0 KB)"
    assert pod_status.hub_progress(["acme/chat"], sizes, tmp_path) == "3.0/3.0 KB"


def test_last_line_finds_pips_progress_and_models_errors(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    log.write_text("Collecting vllm==0.32.0\n  Downloading vllm-0.32.0.whl (326 MB)\r  12%|##   |\nnoise\n")
    assert pod_status.last_line(log, ("Collecting", "Downloading")) == "Downloading vllm-0.32.0.whl (326 MB)"
    assert pod_status.last_line(tmp_path / "missing.log") == ""


def test_status_page_holds_the_port_with_the_status_line(tmp_path: Path) -> None:
    status = pod_status.Status(tmp_path / "status.json")
    page = pod_status.StatusPage("127.0.0.1", _free_port(), status)
    assert page.start()
    try:
        base = f"http://127.0.0.1:{page.port}"
        status.set("preparing", "preparing the GPU: downloading the models: 1.2/12.0 GB <b>")
        code, body = _get(base + "/")
        assert code == 200 and b"downloading the models: 1.2/12.0 GB &lt;b&gt;" in body and b"refresh" in body
        assert _get(base + "/any/path")[0] == 200
        code, body = _get(base + "/health")
        assert code == 503 and json.loads(body)["status"] == "starting"
        assert json.loads(body)["reason"].startswith("preparing the GPU")
        code, body = _get(base + "/pod/status")
        assert code == 200 and json.loads(body)["state"] == "preparing"
        assert json.loads((tmp_path / "status.json").read_text())["line"] == json.loads(body)["line"]
        second = pod_status.StatusPage("127.0.0.1", page.port, status)
        assert not second.start()  # taken: try again later, no exception
    finally:
        page.stop()
    assert not page.running


# -- the supervisor in a thread ------------------------------------------------------------------------------


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Any]:
    """Start a Supervisor in a thread: `pod(**config)` -> (supervisor, thread); stopped (and checked) at the end."""
    started: list[tuple[Any, threading.Thread]] = []
    _, wrapper = _stand_ins(tmp_path)

    def start(plan: str, **config: Any) -> tuple[Any, threading.Thread]:
        env = {"PATH": "/usr/bin:/bin", "WORKSPACE": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
               "STAND_IN_APP": str(tmp_path / "stand_in_app.py"), "STAND_IN_HEALTH": plan}
        settings = {"workspace": tmp_path, "python": str(wrapper), "host": "127.0.0.1", "port": _free_port(),
                    "health_interval": 0, "mode": "cpu", "jupyter": False, "skip_install": True,
                    "skip_doctor": True, "backoff_s": 0.1, **config}
        supervisor = supervise.Supervisor(supervise.PodConfig(env=env, **settings))
        thread = threading.Thread(target=lambda: setattr(supervisor, "result", supervisor.run()), daemon=True)
        thread.start()
        started.append((supervisor, thread))
        return supervisor, thread

    yield start
    for supervisor, thread in started:
        supervisor.stop()
        thread.join(30)
        assert not thread.is_alive() and supervisor.result == 0
        assert not list((tmp_path / "run").glob("*.pid"))


def _until(predicate: Any, timeout_s: float = 30.0) -> None:
    """Wait for `predicate`; a refused or reset connection counts as not yet: the port changes hands (the status
    page binds it once the supervisor runs, and gives it up to the app that has loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _children() -> list[int]:
    """This test process's session (the pytest run), less pytest itself."""
    import os

    return [pid for pid in _session_pids(os.getsid(0)) if pid != os.getpid()]


def test_a_dying_app_is_restarted_with_backoff_while_the_status_page_answers(
        pod: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(_children())
    supervisor, _ = pod("200", preset="no-such-preset", python=sys.executable)  # app.py exits 2: a settings error
    _until(lambda: "app exited with status 2; restarting in 0.4s" in capsys.readouterr().out, 60)
    code, body = _get(f"http://127.0.0.1:{supervisor.config.port}/health")
    assert code == 503 and json.loads(body)["status"] == "starting"  # the status page holds the port meanwhile
    assert json.loads(body)["reason"].startswith(
        "the no-such-preset preset exited (status 2) while starting; starting it again in")
    assert (tmp_path / "logs" / "app.log").read_text().count("start: app (preset no-such-preset)") >= 3
    supervisor.stop()
    _until(lambda: not (set(_children()) - before), 30)


def test_the_health_watch_restarts_a_hung_app(pod: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first app stops answering /health after it took the port over; the second one answers."""
    supervisor, _ = pod("hang,200", health_interval=0.3)
    _until(lambda: (tmp_path / "stand-in-2.json").exists(), 60)
    _until(lambda: _get(f"http://127.0.0.1:{supervisor.config.port}/health")[0] == 200, 30)
    assert json.loads(_get(f"http://127.0.0.1:{supervisor.config.port}/health")[1])["start"] == 2
    out = capsys.readouterr().out
    assert out.count("app hung: no answer from http://127.0.0.1:") == 1, out
    assert "3 times in a row; restarting it" in out and "app exited with status 143; restarting in 0.1s" in out
    time.sleep(1.5)  # the second app is healthy: no more restarts
    assert (tmp_path / "stand-in-starts").read_text() == "2"


def test_the_gpu_preset_takes_the_port_over_from_the_cpu_preset_when_it_is_loaded(
        pod: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The switch itself: the cpu preset serves until the gpu preset has loaded; the port is never left to
    nobody for long, and the status says what happens."""
    supervisor, _ = pod("200", preset="cpu")
    port = supervisor.config.port
    _until(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200, 60)
    with supervisor.lock:  # what preparing the GPU ends with
        supervisor.gpu_path, supervisor.want = True, "gpu"
    _until(lambda: supervisor.next_app is not None or (supervisor.app and supervisor.app.preset == "gpu"), 10)
    gaps, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:  # while the gpu preset loads, the cpu one answers
        try:
            preset = json.loads(_get(f"http://127.0.0.1:{port}/health")[1]).get("preset")
        except OSError:
            gaps += 1
            preset = None
        if preset == "gpu":
            break
        time.sleep(0.05)
    assert preset == "gpu" and gaps < 40, gaps  # the hand-over gap: the cpu app's exit, the gpu app's bind
    out = capsys.readouterr().out
    assert "app: handing the port over from the cpu preset to the gpu preset" in out
    assert supervisor.status.get()["state"] == "serving" and supervisor.status.get()["line"] == ""


# -- what app.py and the page do for the supervisor ----------------------------------------------------------


def test_hand_over_says_ready_then_waits_for_the_port(tmp_path: Path) -> None:
    from voicekit.serve.app import hand_over

    hand_over("127.0.0.1", _free_port(), env={})  # not on a pod: nothing to do
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port, ready = holder.getsockname()[1], tmp_path / "app.handover"
    waiter = threading.Thread(target=hand_over, args=("127.0.0.1", port, {"VOICEKIT_HANDOVER_FILE": str(ready)}))
    waiter.start()
    _until(ready.exists, 10)
    time.sleep(0.3)
    assert waiter.is_alive(), "it waits while the port is taken"
    holder.close()
    waiter.join(5)
    assert not waiter.is_alive()
    with socket.socket() as probe:  # and the port is free for uvicorn
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_the_page_shows_the_pod_status_line_refreshed(kit: Any, tmp_path: Path) -> None:
    from voicekit.serve.app import pod_status
    from voicekit.serve.page import build_blocks

    status = tmp_path / "status.json"
    assert pod_status(status) == {}
    status.write_text(json.dumps({"state": "preparing", "line": "preparing the GPU: downloading 1.2/6.2 GB"}))
    assert pod_status(status)["line"] == "preparing the GPU: downloading 1.2/6.2 GB"
    line = {"now": "preparing the GPU: downloading 1.2/6.2 GB"}
    blocks = build_blocks(kit, notice="gpu preset unavailable: x", pod_status=lambda: line["now"])
    notices = [block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "vk-notice"]
    assert [block.value for block in notices] == ["**Note:** preparing the GPU: downloading 1.2/6.2 GB"]
    timers = [block for block in blocks.blocks.values() if type(block).__name__ == "Timer"]
    assert len(timers) == 1
    tick = next(dep for dep in blocks.fns.values() if dep.targets and dep.targets[0][0] == timers[0]._id)
    assert tick.fn() == "**Note:** preparing the GPU: downloading 1.2/6.2 GB"
    line["now"] = ""  # no status line: the notice (why the pod runs the cpu preset), as before
    assert tick.fn() == "**Note:** gpu preset unavailable: x"
