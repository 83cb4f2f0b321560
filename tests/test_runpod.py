"""runpod/: start.sh and the supervisor it execs, end to end (shellcheck; CPU mode behind the password;
restart-safety; the gpu preset's checks before any install, the fall-back to the cpu preset with the reason on the
page, preparing the GPU while the cpu preset serves and the switch; the health watcher), bootstrap.sh and the
template's start command (a real git clone of a local repository), checks.py, models.py, and deploy.py against a
local stand-in for the RunPod GraphQL API. tests/test_supervise.py tests supervise.py's parts in-process.

No GPU exists here, so fakes stand in for one, each logging what it was asked to FAKE_EVENTS (a timestamp and the
exact command): a `nvidia-smi` script that lists a GPU (with the driver's CUDA version in its header, as the real
one prints), and a `python` wrapper whose `-m pip` installs nothing and whose `checks.py driver|gpu|toolkit` say
the GPU works (everything else it runs with the real interpreter). The Hugging Face hub is a local stand-in
(tests/stand_in_hub.py) that records every request; a tiny HTTP server stands in for app.py where the test is
about supervision (it hands the port over like app.py, and its /health answers 200, 503 or never)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from stand_in import send_json, serve

import voicekit

ROOT = Path(__file__).resolve().parent.parent
START = ROOT / "runpod" / "start.sh"
WAIT_S = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"voicekit_runpod_{name}", ROOT / "runpod" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pod_env(workspace: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VOICEKIT_", "RUNPOD_", "JUPYTER_")) and key not in ("HF_TOKEN", "HF_HOME")}
    env.update(WORKSPACE=str(workspace), PYTHON=sys.executable, VOICEKIT_POD_MODE="cpu", VOICEKIT_HOST="127.0.0.1",
               VOICEKIT_SKIP_INSTALL="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], out: Path, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, out.read_text()
        try:
            if predicate():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "timed out:\n" + out.read_text()
        time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes], out: Path) -> None:
    """SIGTERM the pod script; it must exit 0 and leave nothing behind."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0, out.read_text()
    deadline = time.monotonic() + 20
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session_pids(proc.pid), "processes left behind"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Whatever is left of a pod script's session (its services run in process groups of their own)."""
    for pid in _session_pids(proc.pid) if proc.poll() is None or _session_pids(proc.pid) else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _start(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(["bash", str(START), *args], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _login_cookie(base: str, password: str) -> str:
    login = urllib.request.Request(base + "/login", method="POST",
                                   data=f"username=anyone&password={password}".encode(),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(login, timeout=10) as response:
        assert response.status == 200
        return "; ".join(value.split(";")[0] for value in response.headers.get_all("set-cookie") or [])


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
# stand-in for nvidia-smi on a host whose driver supports CUDA $FAKE_SMI_CUDA (default 13.0), with one GPU
[[ -n "${FAKE_EVENTS:-}" ]] && echo "$(date +%s.%N) nvidia-smi $*" >>"$FAKE_EVENTS"
if [[ "${1:-}" == "-L" ]]; then echo "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0000)"; exit 0; fi
echo "| NVIDIA-SMI 580.65.06      Driver Version: 580.65.06      CUDA Version: ${FAKE_SMI_CUDA:-13.0}     |"
"""

PYTHON_WITH_GPU = """#!/usr/bin/env bash
# stand-in for the pod's python on a host whose GPU works: pip installs nothing, the GPU checks pass (FAKE_DRIVER=real
# or FAKE_GPU=real: the real check), each logs what it was asked; the rest runs for real. app.py is replaced by
# STAND_IN_APP when that is set.
event() { if [[ -n "${FAKE_EVENTS:-}" ]]; then echo "$(date +%%s.%%N) $*" >>"$FAKE_EVENTS"; fi; }
case "${1:-} ${2:-}" in
    "-m pip") event "pip ${*:3} (in $PWD)"; exit "${FAKE_PIP_STATUS:-0}" ;;
    *"/runpod/checks.py driver")
        event "checks.py driver"
        if [[ "${FAKE_DRIVER:-}" != real ]]; then
            echo "the driver starts and supports CUDA 13.0 (stand-in)"; exit 0
        fi ;;
    *"/runpod/checks.py gpu")
        event "checks.py gpu"
        if [[ "${FAKE_GPU:-}" != real ]]; then
            echo "the GPU works with torch and vLLM imports (stand-in)"; exit 0
        fi ;;
    *"/runpod/checks.py toolkit")
        event "checks.py toolkit"; echo "nvcc 13.0 matches torch's CUDA 13.0 (stand-in)"; exit 0 ;;
esac
if [[ "${1:-}" == */app.py && -n "${STAND_IN_APP:-}" ]]; then exec "%(python)s" "$STAND_IN_APP" "$@"; fi
exec "%(python)s" "$@"
"""

STAND_IN_APP = """import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, %(root)r)
from voicekit.serve.app import hand_over, pod_status  # the pod's port handover and status, as app.py

# A stand-in for app.py. STAND_IN_HEALTH lists per start what /health does: 200, 503 (a dead engine) or hang (no
# answer ever); the last one repeats. With --preset gpu and STAND_IN_GPU_FAILS=1 it exits at once, like a gpu preset
# that cannot load; STAND_IN_LOAD_S: seconds it takes to load. FAKE_EVENTS gets "app --preset P" at each start.
args = sys.argv[2:]
preset, port = args[args.index("--preset") + 1], int(args[args.index("--port") + 1])
if os.environ.get("FAKE_EVENTS"):
    with open(os.environ["FAKE_EVENTS"], "a") as events:
        events.write(f"{time.time():.6f} app --preset {preset}\\n")
if preset == "gpu" and os.environ.get("STAND_IN_GPU_FAILS") == "1":
    print("stand-in: the gpu preset failed to load", flush=True)
    sys.exit(1)
counter = Path(os.environ["WORKSPACE"]) / "stand-in-starts"
start = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(start))
plan = os.environ.get("STAND_IN_HEALTH", "200").split(",")
code = plan[min(start, len(plan)) - 1]
(Path(os.environ["WORKSPACE"]) / f"stand-in-{start}.json").write_text(json.dumps(
    {"preset": preset, "reason": os.environ.get("VOICEKIT_FALLBACK_REASON")}))
time.sleep(float(os.environ.get("STAND_IN_LOAD_S", "0")))

class Health(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if code == "hang":
            time.sleep(3600)
        if self.path == "/pod/status":  # as app.py answers it on a pod
            body = json.dumps(pod_status(os.environ.get("VOICEKIT_POD_STATUS_FILE", "")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            return
        body = json.dumps({"status": "ok", "preset": preset, "start": start} if code == "200" else
                          {"status": "error", "reason": "speech engine died: CUDA error: illegal memory access"})
        self.send_response(int(code))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

hand_over("127.0.0.1", port)
server = ThreadingHTTPServer(("127.0.0.1", port), Health)
server.daemon_threads = True
print(f"stand-in app {start} (preset {preset}): /health answers {code}", flush=True)
server.serve_forever()
"""


def _stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """(a bin folder with the fake nvidia-smi, the python wrapper with fake pip and GPU checks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    wrapper = tmp_path / "python-with-gpu"
    wrapper.write_text(PYTHON_WITH_GPU % {"python": sys.executable})
    wrapper.chmod(0o755)
    (tmp_path / "stand_in_app.py").write_text(STAND_IN_APP % {"root": str(ROOT)})
    return bin_dir, wrapper


def _events(path: Path) -> list[tuple[float, str]]:
    """What the fakes were asked, in order: (time, exact command)."""
    if not path.exists():
        return []
    return [(float(stamp), what) for stamp, what in
            (line.split(" ", 1) for line in path.read_text().splitlines() if line.strip())]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


# ---- start.sh --------------------------------------------------------------------------------------------

def test_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    scripts = sorted(str(path) for path in (ROOT / "runpod").glob("*.sh"))
    result = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_start_cpu_mode_serves_page_and_jupyter_behind_password_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, jport = _free_port(), _free_port()
    marker = tmp_path / "installed"
    marker.write_text(hashlib.sha256((ROOT / "requirements.txt").read_bytes() * 2).hexdigest() + "\n")
    env = _pod_env(tmp_path, VOICEKIT_PORT=str(port), JUPYTER_PORT=str(jport), VOICEKIT_SKIP_INSTALL="0",
                   VOICEKIT_INSTALL_MARKER=str(marker))
    edited = tmp_path / "notebooks" / "01_quickstart.ipynb"  # a user's edit from an earlier start: kept
    edited.parent.mkdir()
    edited.write_text("my edits")
    out = tmp_path / "pod.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(["bash", str(START)], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        base, jbase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{jport}"
        while True:
            assert proc.poll() is None, out.read_text()
            try:
                if _get(base + "/health")[0] == 200 and _get(jbase + "/api/status")[0] in (401, 403):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not up in time:\n" + out.read_text()
            time.sleep(0.5)

        log = out.read_text()
        password = (tmp_path / ".voicekit-password").read_text().strip()
        assert len(password) >= 16
        assert (tmp_path / ".voicekit-password").stat().st_mode & 0o077 == 0
        assert log.count(password) == 1, "the generated password is printed exactly once"
        assert "install: already done" in log
        assert "python -m voicekit doctor" in log and "auto preset" in log

        # the page + API: closed without credentials, open with them (any user name, the password)
        assert _get(base + "/v1/audio/voices")[0] == 401
        basic = "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()
        status, body = _get(base + "/v1/audio/voices", {"Authorization": basic})
        assert status == 200 and json.loads(body)
        assert _get(base + "/v1/audio/voices", {"Authorization": f"Bearer {password}"})[0] == 200
        assert _get(base + "/v1/audio/voices", {"Authorization": "Bearer wrong"})[0] == 401
        status, body = _get(base + "/config")  # Gradio: the page's config needs a login
        assert status == 401 or b'"auth_required":true' in body.replace(b" ", b"")
        status, body = _get(base + "/config", {"Cookie": _login_cookie(base, password)})
        assert status == 200 and b"auth_required" not in body.replace(b" ", b"")
        assert b"vk-notice" not in body  # no fall-back, no notice

        # JupyterLab: token = the password
        assert _get(jbase + "/api/status")[0] in (401, 403)
        assert _get(jbase + "/api/status", {"Authorization": "token wrong"})[0] in (401, 403)
        assert _get(jbase + "/api/status", {"Authorization": f"token {password}"})[0] == 200

        # pid files for a later run to find stale processes
        assert {path.name for path in (tmp_path / "run").glob("*.pid")} >= {"supervise.pid", "app.pid", "jupyter.pid"}

        # the notebooks in JupyterLab's root (the volume), the user's edit untouched; kernels import this checkout
        shipped = sorted(path.relative_to(ROOT / "notebooks") for path in (ROOT / "notebooks").rglob("*")
                         if path.is_file())
        copied = sorted(path.relative_to(tmp_path / "notebooks") for path in (tmp_path / "notebooks").rglob("*")
                        if path.is_file())
        assert copied == shipped and edited.read_text() == "my edits"
        assert f"notebooks: {len(shipped) - 1} new file(s) copied" in log
        jupyter_env = _environ(int((tmp_path / "run" / "jupyter.pid").read_text()))
        assert jupyter_env["PYTHONPATH"].split(":")[0] == str(ROOT)
        # the kernels use the running app through voicekit.connect(), logged in with the pod's password
        assert jupyter_env["VOICEKIT_URL"] == f"http://127.0.0.1:{port}"
        with voicekit.connect(jupyter_env["VOICEKIT_URL"], api_key=jupyter_env["VOICEKIT_PASSWORD"]) as remote:
            assert remote.settings.preset == "cpu" and remote.say("Hi from the notebook.").audio().size > 0
        # compiled-kernel caches on the volume, so a restarted pod does not compile again
        app_env = _environ(int((tmp_path / "run" / "app.pid").read_text()))
        for key, folder in (("VLLM_CACHE_ROOT", "vllm"), ("FLASHINFER_WORKSPACE_BASE", "flashinfer"),
                            ("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "torchinductor")):
            assert app_env[key] == str(tmp_path / "cache" / folder), key
        assert "VOICEKIT_FALLBACK_REASON" not in app_env
        logs = tmp_path / "logs"
        assert (logs / "app.log").is_file() and (logs / "jupyter.log").is_file()
        for path in logs.iterdir():
            assert password not in path.read_text(errors="replace"), f"password leaked into {path.name}"

        # SIGTERM: children stopped, clean exit, within a bounded time
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, out.read_text()
        while _session_pids(proc.pid) and time.monotonic() - started < 40:
            time.sleep(0.2)
        assert not _session_pids(proc.pid), "processes left behind"
        assert not list((tmp_path / "run").glob("*.pid"))
        with pytest.raises(OSError):
            _get(base + "/health")
    finally:
        if proc.poll() is None or _session_pids(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_start_rerun_reuses_password_stops_stale_process_and_once_propagates_failure(tmp_path: Path) -> None:
    (tmp_path / ".voicekit-password").write_text("saved-password-123\n")
    (tmp_path / "run").mkdir()
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "app.py"])
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / "run" / "app.pid").write_text(f"{stale.pid}\n")
    (tmp_path / "run" / "jupyter.pid").write_text(f"{unrelated.pid}\n")  # command line does not match: left alone
    try:
        env = _pod_env(tmp_path, VOICEKIT_PRESET="no-such-preset", VOICEKIT_JUPYTER="0", VOICEKIT_SKIP_DOCTOR="1",
                       VOICEKIT_PORT=str(_free_port()))
        result = subprocess.run(["bash", str(START), "--once"], env=env, capture_output=True, text=True, timeout=90)
        log = result.stdout + result.stderr
        assert result.returncode == 2, log  # app.py's exit status for a settings error
        assert "reusing the one saved" in log and "saved-password-123" not in log
        assert "stopping a stale app process" in log
        assert stale.wait(timeout=5) is not None
        assert unrelated.poll() is None
        assert "no-such-preset" in (tmp_path / "logs" / "app.log").read_text()
    finally:
        for child in (stale, unrelated):
            child.kill()
            child.wait()


def test_start_restarts_a_crashed_service_with_backoff_until_sigterm(tmp_path: Path) -> None:
    env = _pod_env(tmp_path, VOICEKIT_PRESET="no-such-preset", VOICEKIT_JUPYTER="0", VOICEKIT_SKIP_DOCTOR="1",
                   VOICEKIT_PORT=str(_free_port()))
    out = tmp_path / "pod.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(["bash", str(START)], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "restarting in 2s" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        assert "app exited with status 2; restarting in 1s" in out.read_text()
        assert (tmp_path / "logs" / "app.log").read_text().count("start: app") >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        time.sleep(0.2)
        assert not _session_pids(proc.pid), "the backoff sleep or the app was left behind"
    finally:
        if proc.poll() is None or _session_pids(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _gpu_pod_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A pod whose nvidia-smi lists a GPU, with the fakes, the stand-in app and a log of what they were asked."""
    bin_dir, python_with_gpu = _stand_ins(tmp_path)
    return _pod_env(tmp_path, **{"VOICEKIT_POD_MODE": "auto", "PYTHON": str(python_with_gpu), "VOICEKIT_JUPYTER": "0",
                                 "VOICEKIT_SKIP_DOCTOR": "1", "VOICEKIT_PORT": str(_free_port()),
                                 "FAKE_EVENTS": str(tmp_path / "events"),
                                 "STAND_IN_APP": str(tmp_path / "stand_in_app.py"),
                                 "PATH": f"{bin_dir}:{os.environ['PATH']}", **extra})


def _pod_status(port: int) -> dict[str, Any]:
    status, body = _get(f"http://127.0.0.1:{port}/pod/status")
    assert status == 200
    return dict(json.loads(body))


def test_start_without_hf_token_serves_the_cpu_preset_with_the_reason_and_exits_0(tmp_path: Path) -> None:
    """HF_TOKEN unset on a GPU pod: checked in seconds, before any install; the real app.py serves the cpu preset
    with the reason on the page and /pod/status; the supervisor never exits on its own, and SIGTERM gives 0."""
    env = _gpu_pod_env(tmp_path, VOICEKIT_PASSWORD="pod-secret-1", VOICEKIT_SKIP_INSTALL="0",
                       VOICEKIT_INSTALL_MARKER=str(tmp_path / "marker"))
    del env["STAND_IN_APP"]  # the real app
    (tmp_path / "marker").write_text(hashlib.sha256((ROOT / "requirements.txt").read_bytes() * 2).hexdigest())
    port, out = int(env["VOICEKIT_PORT"]), tmp_path / "pod.log"
    proc = _start(env, out)
    try:
        base = f"http://127.0.0.1:{port}"
        # the supervisor's own status page answers while the app loads (or the app already does)
        _wait_for(lambda: _get(base + "/pod/status")[0] == 200, proc, out, 30)
        _wait_for(lambda: _get(base + "/health")[0] == 200, proc, out)
        reason = ("gpu preset unavailable: HF_TOKEN is not set: the gpu preset downloads gated models "
                  "(google/gemma-2-2b-it, canopylabs/orpheus-3b-0.1-ft); accept their licences on huggingface.co, "
                  "create a read token at https://huggingface.co/settings/tokens and set HF_TOKEN in the pod's "
                  "environment; running the cpu preset")
        log = out.read_text()
        assert "mode gpu, preset gpu" in log and log.count(reason) == 1, log
        assert "install: already done" in log  # the cpu preset's packages; nothing of the GPU's is installed
        events = [what for _, what in _events(tmp_path / "events")]
        assert events[:3] == ["nvidia-smi ", "nvidia-smi -L", "checks.py driver"]  # the mode, then the driver
        assert not [what for what in events if what.startswith(("pip", "checks.py gpu", "app --preset gpu"))]
        health = json.loads(_get(base + "/health")[1])
        assert health["status"] == "ok" and health["preset"] == "cpu"
        assert _pod_status(port) | {"updated": ""} == {"state": "fallback", "line": reason, "preset": "cpu",
                                                       "updated": ""}
        status, body = _get(base + "/config", {"Cookie": _login_cookie(base, "pod-secret-1")})
        assert status == 200 and reason.encode() in body  # the page's top line
        app_env = _environ(int((tmp_path / "run" / "app.pid").read_text()))
        assert app_env["VOICEKIT_FALLBACK_REASON"] == reason
        assert app_env["VOICEKIT_POD_STATUS_FILE"] == str(tmp_path / "run" / "status.json")
        time.sleep(1)
        assert (tmp_path / "logs" / "app.log").read_text().count("start: app") == 1, "no restart loop"
        _stop(proc, out)
    finally:
        _kill(proc)


def test_start_with_a_refused_token_serves_the_cpu_preset_and_installs_nothing_of_the_gpu(tmp_path: Path) -> None:
    """The hub refuses the token for a gated model: models.py check says so in seconds, before the GPU install."""
    from stand_in_hub import StandInHub

    hub = StandInHub(repos={"acme/chat": {"config.json": b"{}"}, "acme/speech": {"config.json": b"{}"},
                            "acme/snac": {"config.json": b"{}"}}, gated={"acme/speech": "hf_accepted"})
    env = _gpu_pod_env(tmp_path, HF_TOKEN="hf_other", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                       HF_HOME=str(tmp_path / "hf"), VOICEKIT_CHAT_MODEL="acme/chat", VOICEKIT_TTS_MODEL="acme/speech",
                       VOICEKIT_SNAC_MODEL="acme/snac", VOICEKIT_SKIP_INSTALL="0",
                       VOICEKIT_INSTALL_MARKER=str(tmp_path / "marker"))
    (tmp_path / "marker").write_text(hashlib.sha256((ROOT / "requirements.txt").read_bytes() * 2).hexdigest())
    repos = _model_repos(env)
    hub.repos.update({repo: {"config.json": b"{}"} for repo in repos if repo not in hub.repos})
    port, out = int(env["VOICEKIT_PORT"]), tmp_path / "pod.log"
    proc = _start(env, out)
    try:
        _wait_for(lambda: (tmp_path / "stand-in-1.json").exists() and _get(f"http://127.0.0.1:{port}/health")[0]
                  == 200, proc, out, 60)
        reason = ("gpu preset unavailable: model acme/speech is gated: accept its licence at "
                  "https://huggingface.co/acme/speech with your account, then set HF_TOKEN to a token of that "
                  "account; running the cpu preset")
        assert json.loads((tmp_path / "stand-in-1.json").read_text()) == {"preset": "cpu", "reason": reason}
        assert _pod_status(port)["line"] == reason and out.read_text().count(reason) == 1
        assert [request.path for request in hub.requests] == [f"/api/models/{repo}/auth-check" for repo in repos]
        assert {request.authorization for request in hub.requests} == {"Bearer hf_other"}
        events = [what for _, what in _events(tmp_path / "events")]
        assert not [what for what in events if what.startswith("pip")], events
        assert "checks.py gpu" not in events and "app --preset gpu" not in events
        _stop(proc, out)
    finally:
        _kill(proc)
        hub.close()


def _model_repos(env: dict[str, str]) -> list[str]:
    """The repos models.py would check and download with this environment."""
    listed = subprocess.run([sys.executable, str(ROOT / "runpod" / "models.py"), "list"], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    return listed.stdout.split()


class _Stamped(list):  # type: ignore[type-arg]
    """The stand-in hub's request list, with the time of each request (to order them against the fakes')."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.time())
        super().append(item)


def test_start_checks_first_serves_the_cpu_preset_while_preparing_the_gpu_then_switches(tmp_path: Path) -> None:
    """The whole gpu path with fakes: the driver and the token's access are checked before anything of the GPU is
    installed; the cpu preset serves meanwhile with the progress on the page; pip, the GPU checks and the downloads
    run in that order; then the gpu preset loads beside the cpu one and takes the port over."""
    from stand_in_hub import StandInHub

    hub = StandInHub(gated={"acme/speech": "hf_accepted"})
    hub.requests = _Stamped()
    env = _gpu_pod_env(tmp_path, HF_TOKEN="hf_accepted", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                       HF_HOME=str(tmp_path / "hf"), VOICEKIT_CHAT_MODEL="acme/chat", VOICEKIT_TTS_MODEL="acme/speech",
                       VOICEKIT_SNAC_MODEL="acme/snac", VOICEKIT_SKIP_INSTALL="0", STAND_IN_LOAD_S="1",
                       VOICEKIT_INSTALL_MARKER=str(tmp_path / "marker"), VOICEKIT_HEALTH_INTERVAL="1")
    cpu_digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes() * 2).hexdigest()
    gpu_digest = hashlib.sha256((ROOT / "requirements-gpu.txt").read_bytes() +
                                (ROOT / "requirements.txt").read_bytes()).hexdigest()
    (tmp_path / "marker").write_text(cpu_digest + "\n")
    repos = _model_repos(env)
    assert repos[:3] == ["acme/chat", "acme/speech", "acme/snac"]
    # files every repo's download takes (the recognizer's only its model files): original/ is left out
    hub.repos.update({repo: {"config.json": b"{}", "model.bin": bytes(100 + index),
                             "original/consolidated.pth": b"left out"} for index, repo in enumerate(repos)})
    total = sum(2 + 100 + index for index in range(len(repos)))
    port, out = int(env["VOICEKIT_PORT"]), tmp_path / "pod.log"
    proc = _start(env, out)
    try:
        _wait_for(lambda: _pod_status(port)["state"] == "serving", proc, out, 90)
        assert json.loads(_get(f"http://127.0.0.1:{port}/health")[1])["preset"] == "gpu"
        log = out.read_text()
        for line in ("the driver starts and supports CUDA 13.0 (stand-in)",
                     "all models accessible: " + ", ".join(repos), "install: already done",
                     "status: preparing the GPU", "installing vLLM and torch for CUDA (pip install -r "
                     "requirements-gpu.txt", "the GPU works with torch and vLLM imports (stand-in)",
                     "CUDA toolkit: nvcc 13.0 matches", "downloading the models: ",
                     f"models downloaded: {total}/{total} B", "status: switching to the GPU",
                     "app: handing the port over from the cpu preset to the gpu preset",
                     "app: the gpu preset serves port"):
            assert line in log, f"{line!r} not in:\n{log}"
        assert "VLLM_USE_FLASHINFER_SAMPLER" not in log and "gpu preset unavailable" not in log

        events = _events(tmp_path / "events")
        events += [(stamp, f"hub {request.method} {request.path}")
                   for stamp, request in zip(hub.requests.times, hub.requests, strict=True)]
        order = [what for _, what in sorted(events)]
        first = {kind: next(i for i, what in enumerate(order) if what.startswith(kind))
                 for kind in ("nvidia-smi", "checks.py driver", "hub GET /api/models/", "app --preset cpu", "pip",
                              "checks.py gpu", "checks.py toolkit", "hub GET /acme/", "app --preset gpu")}
        checks_done = max(i for i, what in enumerate(order) if what.endswith("/auth-check"))
        assert first["nvidia-smi"] < first["checks.py driver"] < first["hub GET /api/models/"] <= checks_done
        assert checks_done < first["pip"] < first["checks.py gpu"] < first["checks.py toolkit"]
        assert first["checks.py toolkit"] < first["hub GET /acme/"] < first["app --preset gpu"]
        assert checks_done < first["app --preset cpu"] < first["app --preset gpu"]
        assert order[first["hub GET /api/models/"]:checks_done + 1] == [
            f"hub GET /api/models/{repo}/auth-check" for repo in repos]
        assert [what for what in order if what.startswith("pip")] == [
            f"pip install --no-input -r {ROOT}/requirements-gpu.txt (in {ROOT})"]
        assert order[:3] == ["nvidia-smi ", "nvidia-smi -L", "checks.py driver"]  # the mode, then the driver
        assert order.count("app --preset cpu") == 1 and order.count("app --preset gpu") == 1
        assert {request.authorization for request in hub.requests} == {"Bearer hf_accepted"}
        assert not [path for path in hub.paths() if "original" in path]
        assert set((tmp_path / "marker").read_text().split()) == {cpu_digest, gpu_digest}

        # the cpu preset's app is gone; the gpu one serves with the page's status line empty
        assert json.loads((tmp_path / "stand-in-1.json").read_text())["preset"] == "cpu"
        assert json.loads((tmp_path / "stand-in-2.json").read_text()) == {"preset": "gpu", "reason": None}
        assert _pod_status(port)["line"] == "" and _pod_status(port)["preset"] == "gpu"
        files = sorted(f"{path.parts[-4]}/{path.name}" for path in (tmp_path / "hf" / "hub").glob("*/snapshots/*/*"))
        assert files == sorted(f"models--{repo.replace('/', '--')}/{name}" for repo in repos
                               for name in ("config.json", "model.bin"))
        _stop(proc, out)
    finally:
        _kill(proc)
        hub.close()


def test_start_falls_back_when_the_driver_does_not_start(tmp_path: Path) -> None:
    """nvidia-smi lists a GPU but this machine has no CUDA driver library: the real `checks.py driver` says so in
    a second, and the cpu preset serves with that reason, nothing installed."""
    env = _gpu_pod_env(tmp_path, FAKE_DRIVER="real", HF_TOKEN="hf_x")
    port, out = int(env["VOICEKIT_PORT"]), tmp_path / "pod.log"
    verdict = subprocess.run([sys.executable, str(ROOT / "runpod" / "checks.py"), "driver"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert verdict.returncode == 1 and verdict.stdout.startswith("the CUDA driver does not start (libcuda.so.1")
    reason = f"gpu preset unavailable: {verdict.stdout.strip()}; running the cpu preset"
    proc = _start(env, out)
    try:
        _wait_for(lambda: (tmp_path / "stand-in-1.json").exists(), proc, out, 60)
        assert json.loads((tmp_path / "stand-in-1.json").read_text()) == {"preset": "cpu", "reason": reason}
        _wait_for(lambda: _pod_status(port)["state"] == "fallback", proc, out, 30)
        assert _pod_status(port)["line"] == reason and out.read_text().count(reason) == 1
        _stop(proc, out)
    finally:
        _kill(proc)


def test_start_falls_back_after_the_install_when_torch_cannot_use_the_gpu(tmp_path: Path) -> None:
    """The driver looks fine but the installed torch cannot use the GPU (the real `checks.py gpu` here: a CPU-only
    torch): the cpu preset, already serving, goes on with the reason on its page; no download, no gpu preset."""
    verdict = subprocess.run([sys.executable, str(ROOT / "runpod" / "checks.py"), "gpu"], capture_output=True,
                             text=True, timeout=120)
    assert verdict.returncode == 1 and verdict.stdout.strip()  # e.g. "torch 2.13.0+cpu is a CPU-only build"
    reason = f"gpu preset unavailable: {verdict.stdout.strip().splitlines()[-1]}; running the cpu preset"
    env = _gpu_pod_env(tmp_path, FAKE_GPU="real", HF_TOKEN="hf_x", VOICEKIT_SKIP_DOWNLOAD="1")
    port, out = int(env["VOICEKIT_PORT"]), tmp_path / "pod.log"
    proc = _start(env, out)
    try:
        _wait_for(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200 and
                  _pod_status(port)["state"] == "fallback", proc, out, 120)
        assert _pod_status(port) | {"updated": ""} == {"state": "fallback", "line": reason, "preset": "cpu",
                                                       "updated": ""}
        assert json.loads((tmp_path / "stand-in-1.json").read_text()) == {"preset": "cpu", "reason": None}
        events = [what for _, what in _events(tmp_path / "events")]
        assert "checks.py gpu" in events and "checks.py toolkit" not in events and "app --preset gpu" not in events
        _stop(proc, out)
    finally:
        _kill(proc)


def test_start_restarts_the_app_when_health_reports_a_dead_engine(tmp_path: Path) -> None:
    _, python_with_gpu = _stand_ins(tmp_path)
    env = _pod_env(tmp_path, PYTHON=str(python_with_gpu), STAND_IN_APP=str(tmp_path / "stand_in_app.py"),
                   STAND_IN_HEALTH="503,200", VOICEKIT_HEALTH_INTERVAL="1", VOICEKIT_JUPYTER="0",
                   VOICEKIT_SKIP_DOCTOR="1", VOICEKIT_PORT=str(_free_port()))
    out = tmp_path / "pod.log"
    proc = _start(env, out)
    try:
        _wait_for(lambda: (tmp_path / "stand-in-2.json").exists(), proc, out, 60)
        time.sleep(3)  # the second app is healthy: no more restarts
        log = out.read_text()
        assert log.count("app unhealthy: /health answered 503: speech engine died: CUDA error: illegal memory "
                         "access; restarting it") == 1, log
        assert "app exited with status 143; restarting in 1s" in log
        assert (tmp_path / "stand-in-starts").read_text() == "2"
        _stop(proc, out)
    finally:
        _kill(proc)


def test_start_gives_up_on_a_gpu_preset_that_keeps_failing(tmp_path: Path) -> None:
    """The GPU is ready but the gpu preset exits while loading, three times: the cpu preset, serving all along,
    stays, with the reason; the supervisor goes on (SIGTERM: 0)."""
    env = _gpu_pod_env(tmp_path, VOICEKIT_POD_MODE="gpu", HF_TOKEN="hf_x", VOICEKIT_SKIP_DOWNLOAD="1",
                       STAND_IN_GPU_FAILS="1")
    port, out = int(env["VOICEKIT_PORT"]), tmp_path / "pod.log"
    proc = _start(env, out)
    try:
        _wait_for(lambda: "gpu preset unavailable" in out.read_text(), proc, out, 60)
        reason = (f"gpu preset unavailable: the gpu preset exited 3 times in a row (last status 1; see "
                  f"{tmp_path}/logs/app-gpu.log); running the cpu preset")
        log = out.read_text()
        assert log.count(reason) == 1 and "restarting in 1s" in log and "restarting in 2s" in log, log
        assert (tmp_path / "logs" / "app-gpu.log").read_text().count("the gpu preset failed to load") == 3
        assert json.loads((tmp_path / "stand-in-1.json").read_text()) == {"preset": "cpu", "reason": None}
        assert _pod_status(port)["line"] == reason
        time.sleep(1.5)
        assert [what for _, what in _events(tmp_path / "events")].count("app --preset gpu") == 3
        assert json.loads(_get(f"http://127.0.0.1:{port}/health")[1])["preset"] == "cpu"
        _stop(proc, out)
    finally:
        _kill(proc)


def test_start_rejects_an_unknown_option_and_carries_on_past_a_wrong_mode(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(START), "--bogus"], env=_pod_env(tmp_path), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "unknown option" in result.stderr
    env = _pod_env(tmp_path, VOICEKIT_POD_MODE="tpu", VOICEKIT_SKIP_DOCTOR="1", VOICEKIT_JUPYTER="0",
                   VOICEKIT_PRESET="no-such-preset", VOICEKIT_PORT=str(_free_port()), PATH="/usr/bin:/bin")
    result = subprocess.run(["bash", str(START), "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert "VOICEKIT_POD_MODE must be gpu, cpu or auto, not 'tpu': using auto" in result.stdout
    assert "mode cpu, preset no-such-preset" in result.stdout and result.returncode == 2


# ---- checks.py -------------------------------------------------------------------------------------------

def test_checks_name_why_the_gpu_preset_cannot_run() -> None:
    checks = _load("checks")
    header = "| NVIDIA-SMI 550.127.05    Driver Version: 550.127.05    CUDA Version: 12.4     |"
    assert checks.driver_cuda(header) == "12.4" and checks.driver_cuda("no header") is None
    problem = checks.gpu_problem
    assert problem("2.13.0+cu130", "13.0", False, "12.4", True) == (
        "torch 2.13.0+cu130 cannot use the GPU (driver too old for CUDA 13.0: nvidia-smi says 12.4)")
    assert problem("2.13.0+cu130", "13.0", False, "13.0", False) == (
        "torch 2.13.0+cu130 sees no GPU (nvidia-smi lists none)")
    assert "is_available() is False" in problem("2.13.0+cu130", "13.0", False, "13.1", True)
    assert problem("2.13.0+cpu", None, False, "12.4", True) == "torch 2.13.0+cpu is a CPU-only build"
    assert problem(None, None, False, None, False) == "torch is not installed"
    volta = "torch.AcceleratorError: CUDA error: no kernel image is available for execution on the device"
    assert problem("2.13.0+cu130", "13.0", True, "13.0", True, op_error=volta) == (
        f"torch 2.13.0+cu130 cannot run on this GPU ({volta})")
    assert problem("2.13.0+cu130", "13.0", True, "13.0", True, vllm_error="ImportError: libcudart.so.13") == (
        "vLLM does not import (ImportError: libcudart.so.13)")
    assert problem("2.13.0+cu130", "13.0", True, "13.0", True) is None

    assert checks.toolkit_problem("13.0", "13.0") is None
    assert checks.toolkit_problem("12.4", "13.0") == "nvcc 12.4 does not match torch's CUDA 13.0"
    assert checks.toolkit_problem(None, "13.0").startswith("no nvcc found")


def test_checks_driver_judges_nvidia_smi_and_the_driver_library_before_any_install() -> None:
    checks = _load("checks")
    problem = checks.driver_problem
    assert problem(False, None, None, None) == "nvidia-smi lists no GPU"
    assert problem(True, "12.4", "12.4", None) == (
        "the driver supports CUDA 12.4, the gpu preset's torch is a CUDA 13.0 build (NVIDIA driver R580 or newer): "
        "deploy on a host that offers CUDA 13.0")
    assert problem(True, "12.4", "13.0", None) is None  # NVIDIA's forward-compatibility libraries: libcuda says 13.0
    assert problem(True, "13.1", None, None) is None and problem(True, None, None, None) is None
    assert problem(True, "13.0", "13.0", "cuInit: CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE") == (
        "the CUDA driver does not start (cuInit: CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE; nvidia-smi says CUDA 13.0)")
    # the supervisor checks before voicekit is installed, so checks.py cannot import doctor's constant: kept equal
    from voicekit import doctor

    assert checks.POD_TORCH_CUDA == doctor.GPU_TORCH_CUDA
    assert f"a CUDA {checks.POD_TORCH_CUDA} build" in (ROOT / "requirements-gpu.txt").read_text()


def test_checks_sizes_asks_the_hub_what_each_download_takes(tmp_path: Path) -> None:
    from stand_in_hub import StandInHub

    checks = _load("checks")
    hub = StandInHub(repos={"acme/chat": {"config.json": b"{}", "model.safetensors": b"c" * 100,
                                          "original/consolidated.pth": b"left out"}},
                     gated={"acme/chat": "hf_ok"})
    try:
        assert checks.model_sizes(["acme/chat", "acme/none"], "hf_ok", endpoint=hub.url) == {"acme/chat": 102,
                                                                                               "acme/none": None}
        assert checks.model_sizes(["acme/chat"], "hf_refused", endpoint=hub.url) == {"acme/chat": None}
        assert {request.authorization for request in hub.requests} == {"Bearer hf_ok", "Bearer hf_refused"}
    finally:
        hub.close()


def test_checks_health_tells_ok_error_and_no_answer_apart(tmp_path: Path) -> None:
    checks = _load("checks")
    answers = {"/ok": (200, {"status": "ok"}), "/dead": (503, {"status": "error", "reason": "chat engine died"}),
               "/odd": (500, ["not", "an", "object"])}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            send_json(self, *answers[self.path])

    server, url = serve(Handler)
    try:
        assert checks.check_health(url + "/ok") == (0, "ok")
        assert checks.check_health(url + "/dead") == (1, "/health answered 503: chat engine died")
        assert checks.check_health(url + "/odd") == (1, "/health answered 500")
    finally:
        server.shutdown()
        server.server_close()
    assert checks.check_health(f"http://127.0.0.1:{_free_port()}/health")[0] == 2


# ---- the template's start command and bootstrap.sh: a real clone of a local repository ------------------

def _local_repo(tmp_path: Path) -> str:
    """A bare repository holding this working tree's runpod/ and notebooks/ (committed or not)."""
    work = tmp_path / "src"
    for folder in ("runpod", "notebooks"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "requirements-gpu.txt"):
        shutil.copy(ROOT / name, work / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "voicekit.git")], check=True)
    subprocess.run(["git", "-C", str(work), "remote", "add", "origin", str(tmp_path / "voicekit.git")], check=True)
    return f"file://{tmp_path / 'voicekit.git'}"


def test_template_start_command_clones_once_keeps_a_venv_and_runs_start_sh(tmp_path: Path) -> None:
    url = _local_repo(tmp_path)
    workspace = tmp_path / "workspace"
    command = shlex.split(json.loads((ROOT / "runpod" / "template.json").read_text())["dockerStartCmd"])
    # what a pod gets: the template's start command and env; start.sh runs once (no app deps in the fresh venv)
    env = _pod_env(workspace, VOICEKIT_GIT_URL=url, VOICEKIT_GIT_REF="main", VOICEKIT_BASE_PYTHON=sys.executable,
                   VOICEKIT_POD_ONCE="1", VOICEKIT_SKIP_DOCTOR="1", VOICEKIT_JUPYTER="0",
                   VOICEKIT_PORT=str(_free_port()))
    del env["PYTHON"]  # bootstrap.sh sets it: the venv on the volume

    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    log = first.stdout + first.stderr
    clone = workspace / "voicekit"
    assert (clone / "runpod" / "start.sh").is_file() and "Cloning into" in log, log
    assert f"venv: creating {workspace}/venv" in log
    assert f"repo {clone}" in log and "--once: not restarting" in log  # start.sh ran from the clone
    assert (workspace / "notebooks" / "01_quickstart.ipynb").is_file()
    # the venv's python ran the clone's app.py (the test repository holds runpod/ and notebooks/ only)
    app_log = (workspace / "logs" / "app.log").read_text()
    assert f"{workspace}/venv/bin/python: can't open file '{clone}/app.py'" in app_log

    work = tmp_path / "src"  # a new commit upstream: the next start fast-forwards to it
    (work / "runpod" / "NEW").write_text("x")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(work)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "second"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "main"], check=True)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    log = second.stdout + second.stderr
    assert "Cloning into" not in log and f"venv: reusing {workspace}/venv" in log, log
    assert "repo: up to date" in log and "second" in log and (clone / "runpod" / "NEW").is_file()

    env.pop("VOICEKIT_GIT_URL")
    (tmp_path / "empty").mkdir()
    missing = subprocess.run(command, env={**env, "WORKSPACE": str(tmp_path / "empty")}, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode != 0 and "set VOICEKIT_GIT_URL to the voicekit git repository" in missing.stderr
    assert not (tmp_path / "empty" / "voicekit").exists()


# ---- models.py -------------------------------------------------------------------------------------------

def test_models_lists_the_gpu_preset_repos() -> None:
    models = _load("models")
    assert models.gpu_models({}) == ["google/gemma-2-2b-it", "canopylabs/orpheus-3b-0.1-ft",
                                     "hubertsiuzdak/snac_24khz", "mobiuslabsgmbh/faster-whisper-large-v3-turbo"]
    assert models.gpu_models({"VOICEKIT_CHAT_MODEL": "me/chat"})[0] == "me/chat"
    # the recognizer: a faster-whisper name's repo, an owner/name as given; none for the packaged ones or a folder
    assert models.gpu_models({"VOICEKIT_ASR_MODEL": "small.en"})[-1] == "Systran/faster-whisper-small.en"
    assert models.gpu_models({"VOICEKIT_ASR_MODEL": "me/whisper"})[-1] == "me/whisper"
    for packaged in ("tiny.en", "base", "/models/whisper"):
        assert models.gpu_models({"VOICEKIT_ASR_MODEL": packaged})[-1] == "hubertsiuzdak/snac_24khz"
    assert models.main(["list"]) == 0
    assert models.patterns("mobiuslabsgmbh/faster-whisper-large-v3-turbo", {}) == [
        "config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
    assert models.patterns("google/gemma-2-2b-it", {}) is None


def test_models_check_and_download_against_a_stand_in_hub(tmp_path: Path) -> None:
    from stand_in_hub import StandInHub

    hub = StandInHub(repos={"acme/chat": {"config.json": b"{}", "model.safetensors": b"c" * 64},
                            "acme/speech": {"config.json": b"{}", "model.safetensors": b"s" * 64},
                            "acme/snac": {"config.json": b"{}", "pytorch_model.bin": b"n" * 64},
                            "acme/whisper": {"config.json": b"{}", "model.bin": b"w" * 64, "tokenizer.json": b"{}",
                                             "vocabulary.json": b"[]", "pytorch_model.bin": b"not this one"}},
                     gated={"acme/speech": "hf_accepted"})
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_other",
           "VOICEKIT_CHAT_MODEL": "acme/chat", "VOICEKIT_TTS_MODEL": "acme/speech", "VOICEKIT_SNAC_MODEL": "acme/snac",
           "VOICEKIT_ASR_MODEL": "acme/whisper"}
    env.pop("HF_HUB_CACHE", None)

    def models_py(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "runpod" / "models.py"), *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    try:
        checked = models_py("check")
        assert checked.returncode == 1
        assert checked.stderr.strip() == ("model acme/speech is gated: accept its licence at "
                                          "https://huggingface.co/acme/speech with your account, then set HF_TOKEN "
                                          "to a token of that account")
        assert [r.path for r in hub.requests] == [f"/api/models/acme/{name}/auth-check"
                                                  for name in ("chat", "speech", "snac", "whisper")]
        assert {r.authorization for r in hub.requests} == {"Bearer hf_other"}
        failed = models_py("download")
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines()[-1].startswith("error: model acme/speech is gated")
        assert "Traceback" not in failed.stderr and "hf_other" not in failed.stdout + failed.stderr

        done = models_py("download", HF_TOKEN="hf_accepted")
        assert done.returncode == 0, done.stderr
        cache = tmp_path / "hf" / "hub"
        files = sorted(f"{p.parts[-4]}/{p.name}" for p in cache.glob("*/snapshots/*/*"))
        assert files == ["models--acme--chat/config.json", "models--acme--chat/model.safetensors",
                         "models--acme--snac/config.json", "models--acme--snac/pytorch_model.bin",
                         "models--acme--speech/config.json", "models--acme--speech/model.safetensors",
                         "models--acme--whisper/config.json", "models--acme--whisper/model.bin",
                         "models--acme--whisper/tokenizer.json", "models--acme--whisper/vocabulary.json"]
        assert models_py("check", HF_TOKEN="hf_accepted").returncode == 0
    finally:
        hub.close()


# ---- deploy.py against a stand-in RunPod API -------------------------------------------------------------

class StandIn:
    """A tiny RunPod GraphQL stand-in on 127.0.0.1: records each query, answers by the query's root field."""

    def __init__(self, key: str = "rpa_good_key", templates: list[dict[str, str]] | None = None) -> None:
        self.key, self.templates, self.queries = key, templates or [], []
        self.pod_polls = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/graphql"
                if self.headers.get("Authorization") != f"Bearer {stand_in.key}":
                    self._send(401, {"error": "Unauthorized"})
                    return
                stand_in.queries.append(body["query"])
                self._send(200, stand_in.answer(body["query"]))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                send_json(self, status, payload)

        self.server, self.url = serve(Handler)

    def answer(self, query: str) -> dict[str, Any]:
        if "podTemplates" in query:
            return {"data": {"myself": {"podTemplates": self.templates}}}
        if "saveTemplate" in query:
            return {"data": {"saveTemplate": {"id": "tpl123", "name": "voicekit"}}}
        if "gpuTypes" in query:
            if "NVIDIA GeForce RTX 4090" not in query:
                return {"data": {"gpuTypes": []}}
            return {"data": {"gpuTypes": [{"id": "NVIDIA GeForce RTX 4090", "memoryInGb": 24}]}}
        if "podFindAndDeployOnDemand" in query:
            return {"data": {"podFindAndDeployOnDemand": {"id": "pod123", "imageName": "x", "env": [],
                                                          "machineId": "m", "machine": {"podHostId": "h"}}}}
        if "pod(input" in query:
            self.pod_polls += 1
            running = self.pod_polls > 1
            return {"data": {"pod": {"id": "pod123", "desiredStatus": "RUNNING" if running else "CREATED",
                                     "runtime": {"ports": []} if running else None}}}
        return {"errors": [{"message": f"stand-in: unexpected query {query[:60]}"}]}


GIT_URL = "https://github.com/acme/voicekit.git"
TEMPLATE = json.loads((ROOT / "runpod" / "template.json").read_text())


@pytest.fixture
def deploy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("HF_TOKEN", "VOICEKIT_PASSWORD", "VOICEKIT_PRESET", "VOICEKIT_POD_MODE", "VOICEKIT_API_KEY",
                "VOICEKIT_GIT_REF"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_good_key")
    monkeypatch.setenv("VOICEKIT_GIT_URL", GIT_URL)
    yield _load("deploy")


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    server = StandIn()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_deploy_creates_template_and_pod_with_the_exact_requests(deploy: Any, stand_in: StandIn,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert deploy.main(["--gpu", "NVIDIA GeForce RTX 4090", "--cloud", "secure", "--volume-gb", "60",
                        "--poll-s", "0.01"]) == 0
    out = capsys.readouterr()
    kinds = [next(k for k in ("podTemplates", "saveTemplate", "gpuTypes", "podFindAndDeployOnDemand", "pod(input")
                  if k in query) for query in stand_in.queries]
    assert kinds == ["podTemplates", "saveTemplate", "gpuTypes", "podFindAndDeployOnDemand", "pod(input", "pod(input"]
    template, pod = stand_in.queries[1], stand_in.queries[3]
    start = TEMPLATE["dockerStartCmd"]  # the stock CUDA 13 image + clone-and-bootstrap start command
    for text in ('name: "voicekit"', 'imageName: "runpod/pytorch:1.0.2-cu1300-torch280-ubuntu2404"',
                 f'dockerArgs: "{start}"', 'ports: "7860/http,8888/http"',
                 'volumeMountPath: "/workspace"', "volumeInGb: 60", "containerDiskInGb: 30", "isPublic: false",
                 '{ key: "HF_TOKEN", value: "" }', '{ key: "HF_HOME", value: "/workspace/hf" }',
                 f'{{ key: "VOICEKIT_GIT_URL", value: "{GIT_URL}" }}', '{ key: "VOICEKIT_GIT_REF", value: "main" }',
                 '{ key: "NVIDIA_DISABLE_REQUIRE", value: "1" }'):
        assert text in template, text
    assert "hf_test_token" not in template, "secrets stay out of the template"
    for text in ('gpuTypeId: "NVIDIA GeForce RTX 4090"', "cloudType: SECURE", "gpuCount: 1",
                 'imageName: "runpod/pytorch:1.0.2-cu1300-torch280-ubuntu2404"', f'dockerArgs: "{start}"',
                 'allowedCudaVersions: ["13.0"]', 'ports: "7860/http,8888/http"',
                 'volumeMountPath: "/workspace"', "volumeInGb: 60", 'templateId: "tpl123"',
                 '{ key: "HF_TOKEN", value: "hf_test_token" }', '{ key: "VOICEKIT_POD_MODE", value: "auto" }',
                 f'{{ key: "VOICEKIT_GIT_URL", value: "{GIT_URL}" }}'):
        assert text in pod, text
    assert "https://console.runpod.io/deploy?template=tpl123" in out.out
    assert "https://pod123-7860.proxy.runpod.net" in out.out and "https://pod123-8888.proxy.runpod.net" in out.out
    assert "rpa_good_key" not in out.out + out.err and "hf_test_token" not in out.out + out.err


def test_deploy_with_a_built_image_starts_start_sh_and_clones_nothing(deploy: Any, stand_in: StandIn,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEKIT_GIT_URL")
    assert deploy.main(["--image", "ghcr.io/acme/voicekit:1.2.0", "--cuda-versions", "13.0,13.1", "--no-wait"]) == 0
    template, pod = stand_in.queries[1], stand_in.queries[3]
    for query in (template, pod):
        assert 'imageName: "ghcr.io/acme/voicekit:1.2.0"' in query
        assert 'dockerArgs: "bash /opt/voicekit/runpod/start.sh"' in query and "VOICEKIT_GIT" not in query
    assert 'allowedCudaVersions: ["13.0", "13.1"]' in pod


def test_deploy_cuda_versions_are_13_0_and_every_later_one_runpod_offers(deploy: Any,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # RunPod matches allowedCudaVersions exactly: the default lists each version it offers from 13.0 on
    assert deploy.cuda_versions_from() == ["13.0"]  # the newest RunPod offers today
    assert deploy.cuda_versions_from(offered=("13.2", "13.0", "12.9", "13.1")) == ["13.0", "13.1", "13.2"]
    assert TEMPLATE["allowedCudaVersions"] == deploy.cuda_versions_from()
    assert deploy.parse_args([]).cuda_versions == ["13.0"]
    assert deploy.parse_args(["--cuda-versions", "13.0,13.1"]).cuda_versions == ["13.0", "13.1"]
    assert "note: RunPod listed 13.0 of CUDA 13.0 and later when this was written; 13.1 is passed as given" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        deploy.parse_args(["--cuda-versions", "12.8,13.0"])
    assert "--cuda-versions 12.8: the gpu preset's torch is a CUDA 13.0 build" in capsys.readouterr().err


def test_deploy_needs_a_public_git_url_for_the_stock_image(deploy: Any, stand_in: StandIn, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert deploy.origin_url(tmp_path) is None
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", GIT_URL], check=True)
    assert deploy.origin_url(tmp_path) == GIT_URL  # the default when neither --git-url nor VOICEKIT_GIT_URL is set

    monkeypatch.delenv("VOICEKIT_GIT_URL")
    monkeypatch.setattr(deploy, "origin_url", lambda *args: None)  # a checkout without an origin remote
    assert deploy.main(["--no-wait"]) == 2
    assert "no repository for the pod to clone: pass --git-url" in capsys.readouterr().err
    assert deploy.main(["--no-wait", "--git-url", "https://bob:ghp_secret@github.com/bob/voicekit.git"]) == 2
    err = capsys.readouterr().err
    assert "holds a password or token" in err and "ghp_secret" not in err
    assert stand_in.queries == []
    assert deploy.main(["--dry-run"]) == 0  # a dry run shows where the URL goes
    assert '{ key: "VOICEKIT_GIT_URL", value: "<VOICEKIT_GIT_URL>" }' in capsys.readouterr().out


def test_deploy_reuses_an_existing_template(deploy: Any, stand_in: StandIn,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.templates = [{"id": "other", "name": "something", "imageName": "x"},
                          {"id": "tplOLD", "name": "voicekit", "imageName": TEMPLATE["imageName"],
                           "dockerArgs": TEMPLATE["dockerStartCmd"]}]
    assert deploy.main(["--template-only"]) == 0
    assert len(stand_in.queries) == 1 and "podTemplates" in stand_in.queries[0]
    out = capsys.readouterr().out
    assert "https://console.runpod.io/deploy?template=tplOLD" in out and "differs" not in out
    assert deploy.main(["--template-only", "--image", "ghcr.io/acme/voicekit:latest"]) == 0
    assert "its image or start command differs" in capsys.readouterr().out


def test_deploy_bad_key_and_unknown_gpu_are_clear_errors(deploy: Any, stand_in: StandIn,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_wrong_key")
    assert deploy.main(["--no-wait"]) == 2
    out = capsys.readouterr()
    assert "RunPod rejected the API key" in out.err and "rpa_wrong_key" not in out.out + out.err
    assert stand_in.queries == []

    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_good_key")
    assert deploy.main(["--gpu", "NVIDIA Imaginary 1", "--no-wait"]) == 2
    assert "No GPU found" in capsys.readouterr().err
    assert not any("podFindAndDeployOnDemand" in query for query in stand_in.queries)

    monkeypatch.delenv("RUNPOD_API_KEY")
    assert deploy.main([]) == 2
    assert "RUNPOD_API_KEY is not set" in capsys.readouterr().err


def test_deploy_dry_run_sends_nothing_and_masks_secrets(deploy: Any, stand_in: StandIn,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_dry_secret")
    monkeypatch.setenv("VOICEKIT_PASSWORD", "pw_dry_secret")
    assert deploy.main(["--dry-run", "--gpu", "NVIDIA A40", "--cloud", "COMMUNITY", "--volume-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert stand_in.queries == []
    assert "Authorization: Bearer ***" in out and f"POST {stand_in.url}/graphql" in out
    for secret in ("rpa_good_key", "hf_dry_secret", "pw_dry_secret"):
        assert secret not in out
    assert '{ key: "HF_TOKEN", value: "***" }' in out and '{ key: "VOICEKIT_PASSWORD", value: "***" }' in out
    assert 'gpuTypeId: "NVIDIA A40"' in out and "cloudType: COMMUNITY" in out and "volumeInGb: 80" in out
    assert 'volumeMountPath: "/workspace"' in out and 'ports: "7860/http,8888/http"' in out
    assert 'allowedCudaVersions: ["13.0"]' in out and out.count(f'dockerArgs: "{TEMPLATE["dockerStartCmd"]}"') == 2
    assert out.count(f'{{ key: "VOICEKIT_GIT_URL", value: "{GIT_URL}" }}') == 2
    assert out.count('imageName: "runpod/pytorch:1.0.2-cu1300-torch280-ubuntu2404"') == 2


def test_template_json_and_dockerfile_match_the_pod_layout() -> None:
    template = TEMPLATE
    assert template["ports"] == "7860/http,8888/http" and template["volumeMountPath"] == "/workspace"
    keys = {item["key"] for item in template["env"]}
    assert {"HF_TOKEN", "VOICEKIT_PASSWORD", "VOICEKIT_PRESET", "VOICEKIT_GIT_URL", "NVIDIA_DISABLE_REQUIRE"} <= keys
    assert all(item.get("description") for item in template["env"])
    assert "runpod/bootstrap.sh" in template["dockerStartCmd"] and "runpod/start.sh" in template["imageStartCmd"]
    for command in (template["dockerStartCmd"], template["imageStartCmd"]):  # the SDK sends them unescaped
        assert '"' not in command and "\\" not in command
    assert template["allowedCudaVersions"] == ["13.0"]  # torch 2.13's CUDA 13.0 build, and nothing later yet
    # the image path and the stock path share the CUDA 13.0 base; the Dockerfile's caches live on the volume
    dockerfile = (ROOT / "runpod" / "Dockerfile").read_text()
    assert f"\nFROM {template['imageName']}\n" in dockerfile and "-cu1300-" in template["imageName"]
    assert "/opt/voicekit" in dockerfile and "requirements-gpu.txt" in dockerfile
    for key in ("VLLM_CACHE_ROOT", "FLASHINFER_WORKSPACE_BASE", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert f"{key}=/workspace/cache/" in dockerfile, key
    workflow = (ROOT / ".github" / "workflows" / "image.yml").read_text()
    assert "file: runpod/Dockerfile" in workflow and "ghcr.io/${{ github.repository_owner }}/voicekit" in workflow
