"""The pod's supervisor: runpod/start.sh prepares the environment and execs this (standard library only: it runs
before anything is installed).

    python runpod/supervise.py           # serve until SIGTERM, restarting what exits
    python runpod/supervise.py --once    # no restarts: the first service to exit stops everything, with its status

The pod never dies during set-up, and its page answers within seconds:
1. Stale processes named in $WORKSPACE/run/*.pid (a pod restart) are stopped; then a status page of its own holds
   the page's port (every path answers the status line; /health 503 "starting"; /pod/status JSON) until an app
   takes the port over.
2. The notebooks are copied onto the volume; the mode is gpu when nvidia-smi lists a GPU.
3. The gpu preset is checked first, in seconds: the driver (`checks.py driver`) and HF_TOKEN. Then the page's
   packages (requirements.txt) are installed once and `models.py check` asks the hub whether the token may read
   every model (the gated Gemma 2 and Orpheus). Any failure: the cpu preset with the reason on the page, for good;
   the supervisor keeps running and exits 0 at SIGTERM.
4. The app starts on the cpu preset, JupyterLab beside it. On the gpu path the page says "preparing the GPU" with
   real figures while, in the background, requirements-gpu.txt is installed, doctor runs, `checks.py gpu` (torch
   sees CUDA, a CUDA op, vLLM imports) and `checks.py toolkit`, and `models.py download` fetches the models (the
   bytes in the Hugging Face cache against the hub's sizes). Then the gpu preset loads beside the cpu one and the
   port is handed over when it is ready ("switching to the GPU"): the app writes VOICEKIT_HANDOVER_FILE once its
   kit is loaded and waits for the port; the supervisor stops whatever held it.
5. Supervision: an app or JupyterLab that exits is restarted after 1, 2, 4 ... 60 s (back to 1 s after a run of
   over a minute); the status page holds the port meanwhile. The health watch asks the serving app's /health every
   VOICEKIT_HEALTH_INTERVAL seconds: an error answer (a dead engine) or no answer three times in a row (hung) stops
   it, to be restarted. The gpu preset exiting three times in a row, each within 30 minutes of its start: the cpu
   preset, with the reason.
6. SIGTERM: everything stops, exit 0.

Logs in $WORKSPACE/logs (install, models, checks, app, app-gpu, jupyter), pid files and status.json in
$WORKSPACE/run. runpod/README.md, "What start.sh does", lists the environment variables.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checks  # runpod/checks.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
RESTART_CAP_S = 60.0  # restart delays: 1, 2, 4 ... 60 s
STEADY_S = 60.0  # a run longer than this starts the delays again from the first
GPU_TRIES = 3  # the gpu preset exiting this many times in a row, each within GPU_WINDOW_S of its start: cpu preset
GPU_WINDOW_S = 1800.0
HUNG_AFTER = 3  # health checks in a row without an answer from the serving app: hung, restarted
STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL
LOOP_S = 0.2
TICK_S = 2.0  # how often a long step refreshes the status line
LOG_EVERY_S = 30.0  # how often a refreshed status line also goes to the pod log
GPU_REASON = "gpu preset unavailable: {why}; running the cpu preset"
TOKEN_MISSING = ("HF_TOKEN is not set: the gpu preset downloads gated models (google/gemma-2-2b-it, "
                 "canopylabs/orpheus-3b-0.1-ft); accept their licences on huggingface.co, create a read token at "
                 "https://huggingface.co/settings/tokens and set HF_TOKEN in the pod's environment")
# each service in its own process group, so that stopping it stops what it started (vLLM's engine processes)
GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def say(message: str) -> None:
    """One line in the pod log."""
    print(f"[voicekit {time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it (killed by SIGTERM: 143)."""
    return 128 - returncode if returncode < 0 else returncode


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s'."""
    seconds = int(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def amount(done: int, total: int | None) -> str:
    """'1.2/6.2 GB' (the unit of the total), or '340 MB' when the total is unknown."""
    scale = total if total else done
    unit, size = next(((name, size) for name, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)) if scale >= size),
                      ("B", 1.0))
    digits = 0 if unit == "B" else 1
    if total is None:
        return f"{done / size:.{digits}f} {unit}"
    return f"{min(done, total) / size:.{digits}f}/{total / size:.{digits}f} {unit}"


# -- the pieces, each testable on its own -----------------------------------------------------------------


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


class Status:
    """What the pod is doing, for people: run/status.json (the app's page shows its line, refreshed) and the
    status page. States: starting, preparing, switching, serving, restarting, fallback, failed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"state": "starting", "line": "starting up", "preset": None}
        self._logged = 0.0

    def set(self, state: str, line: str, *, quiet: bool = False, **extra: Any) -> None:
        """`quiet`: a refresh of a running step, logged at most every LOG_EVERY_S."""
        with self.lock:
            changed = (state, line) != (self.data["state"], self.data["line"])
            if not changed and all(self.data.get(key) == value for key, value in extra.items()):
                return
            self.data.update(extra, state=state, line=line, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(self.data))
                tmp.replace(self.path)
            except OSError:
                pass
            now = time.monotonic()
            if line and changed and (not quiet or now - self._logged >= LOG_EVERY_S):
                self._logged = now
                say(f"status: {line}")

    def get(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.data)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>voicekit: {state}</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 42em; margin: 3em auto; padding: 0 1em; }}</style>
</head><body><h1>voicekit</h1><p id="vk-pod-status">{line}</p>
<p><small>This page reloads itself every 5 s; voicekit's page takes its place as soon as it is ready.</small></p>
</body></html>
"""


class StatusPage:
    """The supervisor's own page on the app's port while no app serves it: up in a second, standard library."""

    def __init__(self, host: str, port: int, status: Status) -> None:
        self.host, self.port, self.status = host, port, status
        self.server: ThreadingHTTPServer | None = None
        self.failed_once = False

    @property
    def running(self) -> bool:
        return self.server is not None

    def start(self) -> bool:
        """Take the port; False when it is still taken (an app that is exiting): try again later."""
        if self.server is not None:
            return True
        status = self.status

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, kind: str, head: bool = False) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                if code == 503:
                    self.send_header("Retry-After", "5")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self, head: bool = False) -> None:
                data = status.get()
                path = self.path.split("?")[0]
                if path == "/pod/status":
                    self._send(200, json.dumps(data).encode(), "application/json", head)
                elif path == "/health":
                    body = {"status": "starting", "reason": data["line"], "pod": data}
                    self._send(503, json.dumps(body).encode(), "application/json", head)
                else:
                    page = PAGE.format(state=html.escape(data["state"]), line=html.escape(data["line"]))
                    self._send(200, page.encode(), "text/html; charset=utf-8", head)

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_POST(self) -> None:
                body = {"error": {"message": f"voicekit is not ready yet: {status.get()['line']}",
                                  "type": "unavailable"}}
                self._send(503, json.dumps(body).encode(), "application/json")

            do_PUT = do_DELETE = do_PATCH = do_POST

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            server = Server((self.host, self.port), Handler)
        except OSError as error:
            if not self.failed_once:
                say(f"status page: port {self.port} is taken ({error.strerror}); trying again")
                self.failed_once = True
            return False
        self.failed_once = False
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="status-page",
                         daemon=True).start()
        self.server = server
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def hub_progress(repos: Sequence[str], sizes: Mapping[str, int | None], cache: Path) -> str:
    """'3.4/12.0 GB (canopylabs/orpheus-3b-0.1-ft: 1.2/6.2 GB)': the bytes in the Hugging Face cache (finished
    blobs and .incomplete ones) against the hub's sizes; the repo is the first one not complete."""
    done = {repo: _folder_bytes(cache / f"models--{repo.replace('/', '--')}" / "blobs") for repo in repos}
    totals = [sizes.get(repo) for repo in repos]
    known = all(total is not None for total in totals)
    overall = amount(sum(done.values()), sum(total or 0 for total in totals) if known else None)
    current = next((repo for repo in repos if sizes.get(repo) is None or done[repo] < (sizes[repo] or 0)), None)
    return overall + (f" ({current}: {amount(done[current], sizes.get(current))})" if current else "")


def _folder_bytes(folder: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def last_line(path: Path, prefixes: Sequence[str] = ("",), tail: int = 16384) -> str:
    """The last line of a log that starts with one of `prefixes` (pip's progress, models.py's error)."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - tail))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(text.replace("\r", "\n").splitlines()):
        line = line.strip()
        if line and line.startswith(tuple(prefixes)):
            return line
    return ""


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


# -- the supervisor ----------------------------------------------------------------------------------------


class Supervisor:
    """Sets the pod up and keeps its services running; `run()` returns the exit status, `stop()` ends it."""

    def __init__(self, config: PodConfig) -> None:
        self.config = config
        self.root = config.root
        self.env = dict(config.env)
        self.status = Status(config.run_dir / "status.json")
        self.page = StatusPage(config.host, config.port, self.status)
        self.stopping = threading.Event()
        self.lock = threading.RLock()
        self.helpers: set[subprocess.Popen[bytes]] = set()
        self.threads: list[threading.Thread] = []
        self.exit_code = 0
        self.gpu_path = False  # the gpu preset wanted: the cpu preset serves while the GPU is prepared
        self.want = "cpu"  # the preset the app should run
        self.reason = ""  # why the gpu preset cannot run (then for good)
        self.prep_step = ""
        self.app: App | None = None  # holds the port
        self.next_app: App | None = None  # loading, to take the port over
        self.app_at = 0.0  # when the next app may start (backoff)
        self.app_backoff = Backoff(config.backoff_s)
        self.gpu_failures = GpuFailures()
        self.gpu_env: dict[str, str] = {}
        self.jupyter: subprocess.Popen[bytes] | None = None
        self.jupyter_started = 0.0
        self.jupyter_at: float | None = None  # None: JupyterLab is not wanted (yet)
        self.jupyter_backoff = Backoff(config.backoff_s)
        self.handover = config.run_dir / "app.handover"
        marker = config.marker or Path(sys.prefix) / ".voicekit-installed"
        self.installs = Installs(self.root, marker)

    # -- running -----------------------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        for folder in (config.log_dir, config.run_dir, Path(self.env.get("HF_HOME") or config.workspace / "hf")):
            folder.mkdir(parents=True, exist_ok=True)
        self.stop_stale()
        (config.run_dir / "supervise.pid").write_text(f"{os.getpid()}\n")
        self.status.set("starting", "starting up")
        self.page.start()
        try:
            if self.set_up_safely():
                if config.health_interval > 0:
                    self._thread(self.watch_health, "health")
                while not self.stopping.wait(LOOP_S):
                    try:
                        with self.lock:
                            self.step_app()
                            self.step_jupyter()
                    except Exception:  # a bug: say it, keep the services going
                        traceback.print_exc()
                        self.stopping.wait(5)
            else:
                self.stopping.wait()
        except Stopping:
            pass
        finally:
            self.shutdown()
        return self.exit_code

    def set_up_safely(self) -> bool:
        try:
            return self.set_up()
        except Stopping:
            raise
        except Exception as error:  # a bug: the status page says so, and the pod stays up
            traceback.print_exc()
            return self.failed(f"{type(error).__name__}: {error}")

    def stop(self, status: int = 0) -> None:
        """End `run()` (SIGTERM does this) with `status`."""
        self.exit_code = status
        self.stopping.set()

    def _thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def shutdown(self) -> None:
        self.stopping.set()
        say("stopping services")
        with self.lock:
            children = [proc for proc in (self.app and self.app.popen, self.next_app and self.next_app.popen,
                                          self.jupyter, *self.helpers) if proc is not None]
        for popen in children:  # all at once, then wait for each: bounded by one grace period
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGTERM)
        for popen in children:
            stop_process(popen)
        for thread in self.threads:
            thread.join(STOP_GRACE_S)
        self.page.stop()
        for name in ("app.pid", "app-next.pid", "jupyter.pid", "supervise.pid"):
            (self.config.run_dir / name).unlink(missing_ok=True)
        self.handover.unlink(missing_ok=True)
        say("stopped")

    def stop_stale(self) -> None:
        """Stop processes an earlier run left (their pid files; the command line must still match)."""
        patterns = {"start": "start.sh", "supervise": "supervise.py", "app": "app.py", "app-next": "app.py",
                    "jupyter": "jupyter"}
        for file in sorted(self.config.run_dir.glob("*.pid")):
            name = file.stem
            try:
                pid = int(file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                cmdline, pid = "", 0
            if pid and pid != os.getpid() and patterns.get(name, "supervise.py") in cmdline:
                say(f"stopping a stale {name} process (pid {pid})")
                stop_pid(pid)
            file.unlink(missing_ok=True)

    # -- set-up ------------------------------------------------------------------------------------------

    def set_up(self) -> bool:
        """Everything before the services start; False when nothing can be served (the status page says why)."""
        config = self.config
        self.copy_notebooks()
        mode = config.mode
        _, listed = checks.nvidia_smi() if mode in ("auto", "gpu") else (None, False)
        if mode == "auto":
            mode = "gpu" if listed else "cpu"
        preset = config.preset or mode
        if mode == "cpu" and preset == "gpu":
            say("VOICEKIT_PRESET=gpu but no GPU here (cpu mode): using the cpu preset")
            preset = "cpu"
        say(f"mode {mode}, preset {preset}, workspace {config.workspace}, repo {self.root}")
        self.gpu_path = mode == "gpu" and preset == "gpu"
        self.want = "cpu" if self.gpu_path else preset
        if self.gpu_path:  # in seconds, before anything is installed
            self.set_prep("checking the GPU driver")
            status, out, _ = self.run_step([config.python, str(self.root / "runpod" / "checks.py"), "driver"],
                                           log=config.log_dir / "checks.log", capture=True)
            verdict = (out.strip().splitlines() or [f"the driver check failed (status {status})"])[-1]
            if status != 0:
                self.fall_back(verdict)
            else:
                say(verdict)
                if not config.skip_download and not self.env.get("HF_TOKEN"):
                    self.fall_back(TOKEN_MISSING)

        reqs = self.root / ("requirements-gpu.txt" if mode == "gpu" and not self.gpu_path else "requirements.txt")
        if not self.install(reqs):
            if reqs.name == "requirements.txt":
                return self.failed(f"pip install -r requirements.txt failed (see {config.log_dir}/install.log)")
            self.fall_back(f"pip install -r {reqs.name} failed (see {config.log_dir}/install.log)")
            self.want = "cpu"
            if not self.install(self.root / "requirements.txt"):
                return self.failed(f"pip install -r requirements.txt failed too (see {config.log_dir}/install.log)")

        if self.gpu_path and not self.reason and not config.skip_download:
            self.set_prep("checking that HF_TOKEN may download the models")
            status, out, err = self.run_step([config.python, str(self.root / "runpod" / "models.py"), "check"],
                                             log=config.log_dir / "models.log", capture=True)
            lines = [line.strip() for line in err.splitlines() if line.strip()]
            problems = [line for line in lines if line.startswith(("model ", "could not fetch"))] or lines[-1:]
            if status == 0:
                say(out.strip() or "all models accessible")
            else:
                self.fall_back("; ".join(problems) or f"models.py check failed (status {status})")
        if not self.gpu_path or self.reason:
            self.doctor()

        self.password()
        if config.jupyter:
            self.jupyter_at = 0.0
        if self.gpu_path and not self.reason:
            self._thread(self.prepare_gpu, "prepare-gpu")
        with self.lock:
            if self.reason:
                self.status.set("fallback", self.reason)
            elif not self.gpu_path:
                self.status.set("starting", f"starting the {self.want} preset")
        pod = self.env.get("RUNPOD_POD_ID")
        if pod:
            say(f"page + API: https://{pod}-{config.port}.proxy.runpod.net   "
                f"JupyterLab: https://{pod}-{config.jport}.proxy.runpod.net")
        else:
            say(f"page + API: http://{config.host}:{config.port}   JupyterLab: http://{config.host}:{config.jport}")
        say(f"log in with any user name and the password; logs in {config.log_dir}")
        return True

    def failed(self, line: str) -> bool:
        say(f"ERROR: {line}")
        self.status.set("failed", f"set-up failed: {line}")
        self.exit_code = 1
        if self.config.once:
            self.stopping.set()
        return False

    def set_prep(self, step: str, quiet: bool = False) -> None:
        """A step of preparing the GPU (the cpu preset serves meanwhile, once it is up)."""
        with self.lock:
            self.prep_step = step
            if not self.reason and self.want == "cpu":
                self.status.set("preparing", self.prep_line(), quiet=quiet, preset=self.app and self.app.preset)

    def prep_line(self) -> str:
        serving = " (the cpu preset serves meanwhile)" if self.app is not None else ""
        return f"preparing the GPU{serving}: {self.prep_step}"

    def fall_back(self, why: str) -> None:
        """The gpu preset cannot run here: the cpu preset from now on, saying why (the supervisor carries on)."""
        with self.lock:
            if self.reason:
                return
            self.reason = GPU_REASON.format(why=why)
            self.want = "cpu"
            say(self.reason)
            self.status.set("fallback", self.reason, preset=self.app and self.app.preset)

    def copy_notebooks(self) -> None:
        """JupyterLab's root is the volume: copy the repo's notebooks there, never over a user's edits."""
        source, dest, copied = self.root / "notebooks", self.config.workspace / "notebooks", 0
        if not source.is_dir():
            return
        for file in sorted(source.rglob("*")):
            target = dest / file.relative_to(source)
            if not file.is_file() or ".ipynb_checkpoints" in file.parts or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
            copied += 1
        say(f"notebooks: {copied} new file(s) copied to {dest} (files already there are kept as they are)")

    def install(self, reqs: Path, tick: Callable[[float], None] | None = None) -> bool:
        """pip install -r `reqs` unless the marker says it is done (or VOICEKIT_SKIP_INSTALL=1)."""
        if self.config.skip_install:
            return True
        if self.installs.done(reqs):
            say(f"install: already done ({self.installs.marker})")
            return True
        log = self.config.log_dir / "install.log"
        say(f"install: pip install -r {reqs.name} (log: {log})")
        if tick is None:
            self.status.set("starting", f"installing voicekit's packages (pip install -r {reqs.name}, once)")
        status, _, _ = self.run_step([self.config.python, "-m", "pip", "install", "--no-input", "-r", str(reqs)],
                                     log=log, tick=tick)
        if status == 0:
            self.installs.record(reqs)
        return status == 0

    def doctor(self) -> None:
        if not self.config.skip_doctor:
            say("python -m voicekit doctor")
            status, _, _ = self.run_step([self.config.python, "-m", "voicekit", "doctor"], log=None)
            if status != 0:
                say("doctor failed (continuing)")

    def password(self) -> None:
        """VOICEKIT_PASSWORD, else the one saved on the volume, else a new one (shown once, saved mode 600)."""
        file = self.config.workspace / ".voicekit-password"
        if self.env.get("VOICEKIT_PASSWORD"):
            say("password: from VOICEKIT_PASSWORD")
        elif file.is_file() and file.stat().st_size:
            self.env["VOICEKIT_PASSWORD"] = file.read_text().rstrip("\n")
            say(f"password: reusing the one saved in {file} (cat it to see it)")
        else:
            password = secrets.token_urlsafe(16)
            with os.fdopen(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
                out.write(password + "\n")
            self.env["VOICEKIT_PASSWORD"] = password
            # the one time the password is shown: this pod log
            say(f"password (generated, shown once, saved in {file}): {password}")

    def run_step(self, argv: Sequence[str], *, log: Path | None, capture: bool = False,
                 tick: Callable[[float], None] | None = None) -> tuple[int, str, str]:
        """Run a set-up step to its end: (status, stdout, stderr). Its output goes to `log` (None: the pod log);
        `capture`: also returned. `tick(seconds)` every TICK_S while it runs. SIGTERM stops it (Stopping)."""
        with contextlib.ExitStack() as stack:
            sink: BinaryIO | None = stack.enter_context(log.open("ab")) if log else None
            if sink:
                sink.write(f"=== {time.strftime('%F %T', time.gmtime())} {' '.join(argv[1:])}\n".encode())
                sink.flush()
            out = stack.enter_context(tempfile.TemporaryFile()) if capture else sink
            err = stack.enter_context(tempfile.TemporaryFile()) if capture else sink
            popen = subprocess.Popen(list(argv), cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, **GROUP)
            with self.lock:
                self.helpers.add(popen)
            started = last = time.monotonic()
            try:
                while True:
                    try:
                        returncode = popen.wait(LOOP_S)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    if self.stopping.is_set():
                        stop_process(popen)
                        raise Stopping
                    if tick and time.monotonic() - last >= TICK_S:
                        last = time.monotonic()
                        tick(last - started)
            finally:
                with self.lock:
                    self.helpers.discard(popen)
            texts = []
            for stream in (out, err) if capture else ():
                stream.seek(0)
                data = stream.read()
                if sink:
                    sink.write(data)
                texts.append(data.decode(errors="replace"))
            return exit_status(returncode), *(texts or ["", ""])

    # -- preparing the GPU (a thread, while the cpu preset serves) ----------------------------------------

    def prepare_gpu(self) -> None:
        try:
            self._prepare_gpu()
        except Stopping:
            pass
        except Exception as error:  # a bug here must not take the pod down: the cpu preset keeps serving
            traceback.print_exc()
            self.fall_back(f"preparing the GPU failed ({type(error).__name__}: {error})")

    def _prepare_gpu(self) -> None:
        config, checks_py = self.config, str(self.root / "runpod" / "checks.py")
        reqs, log = self.root / "requirements-gpu.txt", config.log_dir / "install.log"

        def installing(seconds: float) -> None:
            last = last_line(log, ("Collecting", "Downloading", "Installing", "Building", "Successfully"))
            self.set_prep(f"installing vLLM and torch for CUDA (pip install -r requirements-gpu.txt, several "
                          f"minutes, once; {duration(seconds)} so far){': ' + last[:100] if last else ''}",
                          quiet=seconds > 0)

        if not config.skip_install and not self.installs.done(reqs):
            installing(0)
        if not self.install(reqs, tick=installing):
            return self.fall_back(f"pip install -r requirements-gpu.txt failed (see {log})")
        if not config.skip_doctor:
            self.set_prep("python -m voicekit doctor")
            self.doctor()
        self.set_prep("checking that torch can use the GPU and vLLM imports")
        status, out, _ = self.run_step([config.python, checks_py, "gpu"], log=config.log_dir / "checks.log",
                                       capture=True)
        verdict = (out.strip().splitlines() or [""])[-1]  # importing vLLM may print first: the verdict is last
        if status != 0:
            return self.fall_back(verdict or f"the GPU check failed (see {config.log_dir}/checks.log)")
        say(verdict)
        # FlashInfer JIT-compiles its sampler with the nvcc it finds; one built for another CUDA than torch's
        # fails at the first request. Then vLLM's own sampler is used instead.
        status, out, _ = self.run_step([config.python, checks_py, "toolkit"], log=config.log_dir / "checks.log",
                                       capture=True)
        line = (out.strip().splitlines() or ["no answer"])[-1]
        if status == 0:
            say(f"CUDA toolkit: {line}")
        elif not self.env.get("VLLM_USE_FLASHINFER_SAMPLER"):
            self.gpu_env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
            say(f"CUDA toolkit: {line}: VLLM_USE_FLASHINFER_SAMPLER=0 (vLLM's own sampler, no JIT build)")
        if not config.skip_download:
            problem = self.download_models()
            if problem:
                return self.fall_back(problem)
        with self.lock:
            if not self.reason:
                self.want = "gpu"

    def download_models(self) -> str | None:
        """`models.py download`, its progress on the page; the reason when it fails."""
        config, models_py = self.config, str(self.root / "runpod" / "models.py")
        log = config.log_dir / "models.log"
        self.set_prep("downloading the models: asking the hub for their sizes")
        status, out, _ = self.run_step([config.python, models_py, "list"], log=log, capture=True)
        repos = out.split() if status == 0 else []
        sizes: dict[str, int | None] = {}
        if repos:
            status, out, _ = self.run_step([config.python, str(self.root / "runpod" / "checks.py"), "sizes", *repos],
                                           log=config.log_dir / "checks.log", capture=True)
            with contextlib.suppress(ValueError, IndexError, AttributeError):
                sizes = dict(json.loads(out.strip().splitlines()[-1]))
        cache = Path(self.env.get("HF_HUB_CACHE") or Path(self.env.get("HF_HOME") or
                                                            Path.home() / ".cache" / "huggingface") / "hub")

        def downloading(seconds: float) -> None:
            self.set_prep(f"downloading the models: {hub_progress(repos, sizes, cache)}", quiet=seconds > 0)

        downloading(0)
        say(f"downloading the models into {cache} (log: {log})")
        status, _, _ = self.run_step([config.python, models_py, "download"], log=log, tick=downloading)
        if status != 0:
            why = last_line(log, ("error: ",)).removeprefix("error: ")
            return f"the model download failed ({why or f'status {status}'}; see {log})"
        if repos:
            say(f"models downloaded: {hub_progress(repos, sizes, cache)}")
        return None

    # -- the app: one holds the port, the next one loads beside it -----------------------------------------

    def app_env(self, preset: str) -> dict[str, str]:
        env = {**self.env, "VOICEKIT_HANDOVER_FILE": str(self.handover)}
        if self.gpu_path:  # the page shows the pod's status line, refreshed
            env["VOICEKIT_POD_STATUS_FILE"] = str(self.status.path)
        if preset == "gpu":
            env.update(self.gpu_env)
        elif self.reason:
            env["VOICEKIT_FALLBACK_REASON"] = self.reason
        return env

    def start_app(self, preset: str) -> None:
        config = self.config
        log = config.log_dir / ("app-gpu.log" if preset == "gpu" and self.gpu_path else "app.log")
        self.handover.unlink(missing_ok=True)
        argv = [config.python, str(self.root / "app.py"), "--host", config.host, "--port", str(config.port),
                "--preset", preset]
        with log.open("ab") as sink:
            sink.write(f"=== {time.strftime('%F %T', time.gmtime())} start: app (preset {preset})\n".encode())
            sink.flush()
            popen = subprocess.Popen(argv, cwd=self.root, env=self.app_env(preset), stdin=subprocess.DEVNULL,
                                     stdout=sink, stderr=subprocess.STDOUT, **GROUP)
        self.next_app = App(preset, popen, log)
        (config.run_dir / "app-next.pid").write_text(f"{popen.pid}\n")
        say(f"app: starting the {preset} preset (log: {log})")
        if preset == "gpu" and self.app is not None:
            self.status.set("switching", "switching to the GPU: loading the gpu preset and warming it up; this page "
                            "runs the cpu preset until then (reload it once it has switched)", preset=self.app.preset)

    def promote(self, new: App) -> None:
        """The loading app is ready: stop whatever holds the port, so that it binds it."""
        old, run_dir = self.app, self.config.run_dir
        if old is not None:
            say(f"app: handing the port over from the {old.preset} preset to the {new.preset} preset")
            self.app = None
            stop_process(old.popen)
        self.page.stop()
        self.app, self.next_app = new, None
        self.handover.unlink(missing_ok=True)
        (run_dir / "app-next.pid").unlink(missing_ok=True)
        (run_dir / "app.pid").write_text(f"{new.popen.pid}\n")
        say(f"app: the {new.preset} preset serves port {self.config.port}")
        if self.reason:
            self.status.set("fallback", self.reason, preset=new.preset)
        elif self.gpu_path and new.preset == "cpu":
            self.status.set("preparing", self.prep_line(), preset=new.preset)
        else:
            self.status.set("serving", "", preset=new.preset)

    def step_app(self) -> None:
        now = time.monotonic()
        loading = self.next_app
        if loading is not None and loading.popen.poll() is None and self.handover.exists():
            self.promote(loading)
        elif loading is not None and loading.popen.poll() is not None:
            self.next_app = None
            (self.config.run_dir / "app-next.pid").unlink(missing_ok=True)
            self.app_exited(loading, serving=False)
        serving = self.app
        if serving is not None and serving.popen.poll() is not None:
            self.app = None
            (self.config.run_dir / "app.pid").unlink(missing_ok=True)
            self.app_exited(serving, serving=True)
        if self.stopping.is_set():
            return
        if self.app is None and not self.page.running:
            self.page.start()
        if self.next_app is None and now >= self.app_at and (self.app is None or self.app.preset != self.want):
            self.start_app(self.want)
        elif self.next_app is not None and self.next_app.preset == "gpu" and self.app is not None:
            waited = now - self.next_app.started
            self.status.set("switching", f"switching to the GPU: loading the gpu preset and warming it up "
                            f"({duration(waited)} so far); this page runs the cpu preset until then (reload it once "
                            "it has switched)", quiet=True, preset=self.app.preset)

    def app_exited(self, app: App, serving: bool) -> None:
        status, ran = exit_status(app.popen.returncode), time.monotonic() - app.started
        if self.config.once:
            say(f"app exited with status {status} (--once: not restarting)")
            self.stop(status)
            return
        if app.preset == "gpu" and self.gpu_path and self.gpu_failures.record(status, ran):
            self.fall_back(f"the gpu preset exited {self.gpu_failures.count} times in a row (last status {status}; "
                           f"see {app.log})")
            self.app_backoff.reset()
        delay = self.app_backoff.next(ran)
        self.app_at = time.monotonic() + delay
        say(f"app exited with status {status}; restarting in {delay:g}s (log: {app.log})")
        if self.app is None:  # nothing serves: the status page says so until the next app takes over
            self.status.set("restarting", f"the {app.preset} preset exited (status {status})"
                            f"{'' if serving else ' while starting'}; starting it again in {delay:g} s", preset=None)
        elif app.preset == "gpu" and not self.reason:
            self.status.set("switching", f"switching to the GPU: the gpu preset exited with status {status} while "
                            f"loading (see {app.log}); trying again in {delay:g} s", preset=self.app.preset)

    def watch_health(self) -> None:
        """Restart the serving app when its /health answers an error, or nothing HUNG_AFTER times in a row."""
        interval = float(self.config.health_interval)
        timeout = min(checks.HEALTH_TIMEOUT_S, max(interval, 1.0))
        url = f"http://{self.config.local_host}:{self.config.port}/health"
        watched, misses = None, 0
        while not self.stopping.wait(interval):
            with self.lock:
                app = self.app
            if app is None or app is not watched:
                watched, misses = app, 0
                if app is None:
                    continue
            verdict, line = checks.check_health(url, timeout)
            with self.lock:
                if self.app is not app or self.stopping.is_set():
                    continue
                misses = misses + 1 if verdict == 2 else 0
                if verdict == 1:
                    say(f"app unhealthy: {line}; restarting it (log: {app.log})")
                elif misses >= HUNG_AFTER:
                    say(f"app hung: {line} {misses} times in a row; restarting it (log: {app.log})")
                    misses = 0
                else:
                    continue
            stop_process(app.popen)  # the main loop sees it exit and starts it again

    # -- JupyterLab ----------------------------------------------------------------------------------------

    def step_jupyter(self) -> None:
        config, now = self.config, time.monotonic()
        if self.jupyter_at is None:
            return
        log = config.log_dir / "jupyter.log"
        if self.jupyter is not None and self.jupyter.poll() is not None:
            status = exit_status(self.jupyter.returncode)
            self.jupyter = None
            (config.run_dir / "jupyter.pid").unlink(missing_ok=True)
            if config.once:
                say(f"jupyter exited with status {status} (--once: not restarting)")
                self.stop(status)
                return
            delay = self.jupyter_backoff.next(now - self.jupyter_started)
            self.jupyter_at = now + delay
            say(f"jupyter exited with status {status}; restarting in {delay:g}s (log: {log})")
        if self.jupyter is None and now >= self.jupyter_at and not self.stopping.is_set():
            secret = self.env.get("VOICEKIT_PASSWORD", "").split(":", 1)[-1]  # user:password -> password
            env = {**self.env, "JUPYTER_TOKEN": secret,  # in the environment, not on the command line or in a log
                   "JUPYTER_RUNTIME_DIR": str(config.run_dir / "jupyter-runtime"),
                   # the notebooks' kernels import voicekit from this checkout, and talk to the app through
                   # voicekit.connect() (VOICEKIT_PASSWORD is their key): a second copy of the models would not fit
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(self.root), self.env.get("PYTHONPATH")])),
                   "VOICEKIT_URL": f"http://127.0.0.1:{config.port}"}
            argv = [config.python, "-m", "jupyter", "lab", "--ip", config.host, "--port", str(config.jport),
                    "--no-browser", "--allow-root", f"--ServerApp.root_dir={config.workspace}",
                    "--ServerApp.allow_origin=*", "--ServerApp.port_retries=0"]
            with log.open("ab") as sink:
                sink.write(f"=== {time.strftime('%F %T', time.gmtime())} start: jupyter\n".encode())
                sink.flush()
                self.jupyter = subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                                stderr=subprocess.STDOUT, **GROUP)
            self.jupyter_started = now
            (config.run_dir / "jupyter.pid").write_text(f"{self.jupyter.pid}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervise.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="no restarts: the first service to exit stops "
                        "everything, with its status")
    args = parser.parse_args(argv)
    supervisor = Supervisor(PodConfig.from_env(os.environ, once=args.once))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stopping.set())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
