"""A real vllm-router (PyPI `vllm-router`, a Rust binary) in front of given replicas, for the tests.

The router is what docs/ENGINES.md ("Scale-out") puts in front of several `vllm serve` replicas of one model.
Its health checks run every second here and mark a replica down (or up again) at the first answer, so a test
sees a change within a few seconds instead of the default three minutes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from vllm_serve import free_port, log_tail


def router_binary() -> Path | None:
    """The `vllm-router` command of this Python's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "vllm-router"
    found = beside if beside.exists() else shutil.which("vllm-router")
    return Path(found) if found else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/workers", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def running_router(worker_urls: Sequence[str], log_path: Path, *, policy: str = "round_robin",
                   startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Start vllm-router in front of `worker_urls`; yield its base URL; stop it."""
    binary = router_binary()
    assert binary is not None, "vllm-router is not installed (requirements-dev.txt)"
    port = free_port()
    command = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
               "--worker-urls", *worker_urls, "--policy", policy, "--health-check-interval-secs", "1",
               "--health-failure-threshold", "1", "--health-success-threshold", "1",
               "--worker-startup-timeout-secs", "30", "--log-level", "info"]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not _answers(url):
                assert process.poll() is None, f"vllm-router exited with {process.returncode}:\n{log_tail(log_path)}"
                assert time.monotonic() < deadline, f"vllm-router did not start:\n{log_tail(log_path)}"
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
