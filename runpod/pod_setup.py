"""Setting the pod up (standard library only; runpod/supervise.py explains the pod): the gpu preset's checks in
seconds, the installs, the password, and preparing the GPU in a thread while the cpu preset serves, each step's
progress in the status line; any failure of the gpu path falls back to the cpu preset with the reason, for good.
pod_supervisor.py's Supervisor builds on PodSetUp to run the services."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import checks  # runpod/checks.py (supervise.py puts this folder on sys.path)
from pod_process import GROUP, App, Installs, PodConfig, Stopping, exit_status, stop_process
from pod_status import Status, duration, hub_progress, last_line, say

LOOP_S = 0.2
TICK_S = 2.0  # how often a long step refreshes the status line
GPU_REASON = "gpu preset unavailable: {why}; running the cpu preset"
TOKEN_MISSING = ("HF_TOKEN is not set: the gpu preset downloads gated models (google/gemma-2-2b-it, "
                 "canopylabs/orpheus-3b-0.1-ft); accept their licences on huggingface.co, create a read token at "
                 "https://huggingface.co/settings/tokens and set HF_TOKEN in the pod's environment")


class PodSetUp:
    """The set-up steps and the state they share with the Supervisor: the preset wanted, why the gpu preset cannot
    run, the status line."""

    def __init__(self, config: PodConfig) -> None:
        self.config = config
        self.root = config.root
        self.env = dict(config.env)
        self.status = Status(config.run_dir / "status.json")
        self.stopping = threading.Event()
        self.lock = threading.RLock()
        self.helpers: set[subprocess.Popen[bytes]] = set()
        self.threads: list[threading.Thread] = []
        self.exit_code = 0
        self.gpu_path = False  # the gpu preset wanted: the cpu preset serves while the GPU is prepared
        self.want = "cpu"  # the preset the app should run
        self.reason = ""  # why the gpu preset cannot run (then for good)
        self.prep_step = ""
        self.app: App | None = None  # holds the port (the Supervisor starts it)
        self.gpu_env: dict[str, str] = {}
        self.jupyter_at: float | None = None  # None: JupyterLab is not wanted (yet)
        marker = config.marker or Path(sys.prefix) / ".voicekit-installed"
        self.installs = Installs(self.root, marker)

    def _thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

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
