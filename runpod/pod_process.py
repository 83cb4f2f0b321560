"""The pod's processes and configuration (standard library only; runpod/supervise.py explains the pod): what the
environment asks (PodConfig), stopping a child or a stale process, the restart delays, the gpu preset's failure
count, and which requirement files are installed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pod_status import say

ROOT = Path(__file__).resolve().parent.parent
RESTART_CAP_S = 60.0  # restart delays: 1, 2, 4 ... 60 s
STEADY_S = 60.0  # a run longer than this starts the delays again from the first
GPU_TRIES = 3  # the gpu preset exiting this many times in a row, each within GPU_WINDOW_S of its start: cpu preset
GPU_WINDOW_S = 1800.0
STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL
# each service in its own process group, so that stopping it stops what it started (vLLM's engine processes)
GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it (killed by SIGTERM: 143)."""
    return 128 - returncode if returncode < 0 else returncode


class Backoff:
    """Delays before restarting a service: first, twice that ... cap; from the first again after a steady run."""

    def __init__(self, first: float = 1.0, cap: float = RESTART_CAP_S, steady_s: float = STEADY_S) -> None:
        self.first, self.cap, self.steady_s = first, cap, steady_s
        self.delay = first

    def next(self, ran_s: float) -> float:
        if ran_s > self.steady_s:
            self.delay = self.first
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


class GpuFailures:
    """The gpu preset failing again and again will not heal by itself: `record` says when to give up on it."""

    def __init__(self, tries: int = GPU_TRIES, window_s: float = GPU_WINDOW_S) -> None:
        self.tries, self.window_s, self.count = tries, window_s, 0

    def record(self, status: int, ran_s: float) -> bool:
        """Count an exit of the gpu preset; True once it failed `tries` times in a row, each soon after its start."""
        self.count = self.count + 1 if status != 0 and ran_s < self.window_s else 0
        return self.count >= self.tries


class Installs:
    """Which requirement files are installed in this Python environment: a marker file holds one hash per line
    (of the file and requirements.txt, as runpod/Dockerfile writes it). requirements-gpu.txt includes
    requirements.txt, so its line counts for both."""

    def __init__(self, root: Path, marker: Path) -> None:
        self.root, self.marker = root, marker
        self.cpu, self.gpu = root / "requirements.txt", root / "requirements-gpu.txt"

    def digest(self, reqs: Path) -> str:
        return hashlib.sha256(reqs.read_bytes() + self.cpu.read_bytes()).hexdigest()

    def _lines(self) -> set[str]:
        try:
            return set(self.marker.read_text().split())
        except OSError:
            return set()

    def done(self, reqs: Path) -> bool:
        lines = self._lines()
        if reqs == self.cpu and self.gpu.is_file() and self.digest(self.gpu) in lines:
            return True
        return self.digest(reqs) in lines

    def record(self, reqs: Path) -> None:
        current = {self.digest(path) for path in (self.cpu, self.gpu) if path.is_file()}
        lines = (self._lines() & current) | {self.digest(reqs)}
        try:
            self.marker.write_text("".join(f"{line}\n" for line in sorted(lines)))
        except OSError as error:
            say(f"could not write the install marker {self.marker} ({error})")


def stop_process(popen: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group of a child, SIGKILL after `grace_s`; waits for it."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def stop_pid(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a process that is not our child (a stale one from an earlier run): TERM, then KILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state == "Z":  # exited, waiting for its parent to reap it
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# -- configuration ---------------------------------------------------------------------------------------


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if value.isdigit():
        return int(value)
    say(f"{name} must be a whole number, not '{value}': using {default}")
    return default


@dataclass
class PodConfig:
    """What the environment asks of the pod (runpod/README.md lists the variables)."""

    env: dict[str, str]
    once: bool = False
    root: Path = ROOT
    workspace: Path = Path("/workspace")
    python: str = sys.executable
    host: str = "0.0.0.0"
    port: int = 7860
    jport: int = 8888
    health_interval: float = 15.0
    mode: str = "auto"
    preset: str = ""
    jupyter: bool = True
    skip_install: bool = False
    skip_doctor: bool = False
    skip_download: bool = False
    marker: Path | None = None
    backoff_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], once: bool = False) -> PodConfig:
        env = {key: value for key, value in env.items() if key != "VOICEKIT_FALLBACK_REASON"}
        mode = env.get("VOICEKIT_POD_MODE", "").strip().lower() or "auto"
        if mode not in ("gpu", "cpu", "auto"):
            say(f"VOICEKIT_POD_MODE must be gpu, cpu or auto, not '{mode}': using auto")
            mode = "auto"
        marker = env.get("VOICEKIT_INSTALL_MARKER")
        return cls(
            env=env, once=once or env.get("VOICEKIT_POD_ONCE") == "1",
            workspace=Path(env.get("WORKSPACE") or "/workspace"), python=env.get("PYTHON") or sys.executable,
            host=env.get("VOICEKIT_HOST") or "0.0.0.0", port=_whole(env, "VOICEKIT_PORT", 7860),
            jport=_whole(env, "JUPYTER_PORT", 8888), health_interval=_whole(env, "VOICEKIT_HEALTH_INTERVAL", 15),
            mode=mode, preset=env.get("VOICEKIT_PRESET", "").strip(), jupyter=env.get("VOICEKIT_JUPYTER") != "0",
            skip_install=env.get("VOICEKIT_SKIP_INSTALL") == "1", skip_doctor=env.get("VOICEKIT_SKIP_DOCTOR") == "1",
            skip_download=env.get("VOICEKIT_SKIP_DOWNLOAD") == "1", marker=Path(marker) if marker else None)

    @property
    def log_dir(self) -> Path:
        return self.workspace / "logs"

    @property
    def run_dir(self) -> Path:
        return self.workspace / "run"

    @property
    def local_host(self) -> str:
        """Where this machine reaches the app: 127.0.0.1 for a wildcard address, [addr] for IPv6."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"[{host}]" if ":" in host else host


@dataclass
class App:
    """One run of app.py on one preset."""

    preset: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)


class Stopping(Exception):
    """SIGTERM (or `stop()`) arrived while a set-up step ran."""
