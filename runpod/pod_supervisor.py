"""The pod's Supervisor (standard library only; runpod/supervise.py explains the pod): after the set-up
(pod_setup.py) it keeps the services running: the app (one holds the port, the next one loads beside it and takes
the port over), JupyterLab, restarts with backoff, the health watch, and SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import traceback
from pathlib import Path

import checks  # runpod/checks.py (supervise.py puts this folder on sys.path)
from pod_process import (
    GROUP,
    STOP_GRACE_S,
    App,
    Backoff,
    GpuFailures,
    PodConfig,
    Stopping,
    exit_status,
    stop_pid,
    stop_process,
)
from pod_setup import LOOP_S, PodSetUp
from pod_status import StatusPage, duration, say

HUNG_AFTER = 3  # health checks in a row without an answer from the serving app: hung, restarted


class Supervisor(PodSetUp):
    """Sets the pod up and keeps its services running; `run()` returns the exit status, `stop()` ends it."""

    def __init__(self, config: PodConfig) -> None:
        super().__init__(config)
        self.page = StatusPage(config.host, config.port, self.status)
        self.next_app: App | None = None  # loading, to take the port over
        self.cpu_first = True  # on the gpu path the cpu preset serves first, while the gpu preset loads
        self.app_at = 0.0  # when the next app may start (backoff)
        self.app_backoff = Backoff(config.backoff_s)
        self.gpu_failures = GpuFailures()
        self.jupyter: subprocess.Popen[bytes] | None = None
        self.jupyter_started = 0.0
        self.jupyter_backoff = Backoff(config.backoff_s)
        self.handover = config.run_dir / "app.handover"

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
        if new.preset == "cpu":
            self.cpu_first = False
        if self.reason:
            self.status.set("fallback", self.reason, preset=new.preset)
        elif self.gpu_path and new.preset == "cpu":
            if self.want == "cpu":  # else the GPU is ready: the gpu preset starts next, and says so
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
        preset = self.next_preset()
        if self.next_app is None and now >= self.app_at and (self.app is None or self.app.preset != preset):
            self.start_app(preset)
        elif self.next_app is not None and self.next_app.preset == "gpu" and self.app is not None:
            waited = now - self.next_app.started
            self.status.set("switching", f"switching to the GPU: loading the gpu preset and warming it up "
                            f"({duration(waited)} so far); this page runs the cpu preset until then (reload it once "
                            "it has switched)", quiet=True, preset=self.app.preset)

    def next_preset(self) -> str:
        """The preset the next app runs: the one wanted, but on the gpu path the cpu preset first, even when the GPU
        was ready at once: the page serves while the gpu preset loads (minutes), and stays if it cannot."""
        return "cpu" if self.gpu_path and self.cpu_first else self.want

    def app_exited(self, app: App, serving: bool) -> None:
        status, ran = exit_status(app.popen.returncode), time.monotonic() - app.started
        if app.preset == "cpu":
            self.cpu_first = False  # a cpu preset that cannot start does not hold the gpu preset back
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
