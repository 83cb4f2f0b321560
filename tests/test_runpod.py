"""runpod/: start.sh (shellcheck; CPU mode end to end behind the password; restart-safety), models.py, and
deploy.py against a local stand-in for the RunPod GraphQL API."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
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
    spec.loader.exec_module(module)
    return module


def _pod_env(workspace: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VOICEKIT_", "RUNPOD_", "JUPYTER_")) and key not in ("HF_TOKEN", "HF_HOME")}
    env.update(WORKSPACE=str(workspace), PYTHON=sys.executable, VOICEKIT_POD_MODE="cpu", VOICEKIT_HOST="127.0.0.1",
               VOICEKIT_SKIP_INSTALL="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


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
        login = urllib.request.Request(base + "/login", method="POST",
                                       data=f"username=anyone&password={password}".encode(),
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(login, timeout=10) as response:
            assert response.status == 200
            cookie = "; ".join(value.split(";")[0] for value in response.headers.get_all("set-cookie") or [])
        status, body = _get(base + "/config", {"Cookie": cookie})
        assert status == 200 and b"auth_required" not in body.replace(b" ", b"")

        # JupyterLab: token = the password
        assert _get(jbase + "/api/status")[0] in (401, 403)
        assert _get(jbase + "/api/status", {"Authorization": "token wrong"})[0] in (401, 403)
        assert _get(jbase + "/api/status", {"Authorization": f"token {password}"})[0] == 200

        # pid files for a later run to find stale processes
        assert {path.name for path in (tmp_path / "run").glob("*.pid")} >= {"start.pid", "app.pid", "jupyter.pid"}
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


def test_start_gpu_mode_needs_hf_token(tmp_path: Path) -> None:
    env = _pod_env(tmp_path, VOICEKIT_POD_MODE="gpu", VOICEKIT_SKIP_DOCTOR="1")
    result = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "HF_TOKEN is not set" in result.stderr and "google/gemma-2-2b-it" in result.stderr
    assert not (tmp_path / ".voicekit-password").exists()


def test_start_rejects_unknown_option_and_mode(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(START), "--bogus"], env=_pod_env(tmp_path), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "unknown option" in result.stderr
    env = _pod_env(tmp_path, VOICEKIT_POD_MODE="tpu", VOICEKIT_SKIP_DOCTOR="1")
    result = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "VOICEKIT_POD_MODE must be" in result.stderr


# ---- models.py -------------------------------------------------------------------------------------------

def test_models_lists_the_gpu_preset_repos() -> None:
    models = _load("models")
    assert models.gpu_models({}) == ["google/gemma-2-2b-it", "canopylabs/orpheus-3b-0.1-ft",
                                     "hubertsiuzdak/snac_24khz"]
    assert models.gpu_models({"VOICEKIT_CHAT_MODEL": "me/chat"})[0] == "me/chat"


def test_models_check_and_download_against_a_stand_in_hub(tmp_path: Path) -> None:
    from stand_in_hub import StandInHub

    hub = StandInHub(repos={"acme/chat": {"config.json": b"{}", "model.safetensors": b"c" * 64},
                            "acme/speech": {"config.json": b"{}", "model.safetensors": b"s" * 64},
                            "acme/snac": {"config.json": b"{}", "pytorch_model.bin": b"n" * 64}},
                     gated={"acme/speech": "hf_accepted"})
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_other",
           "VOICEKIT_CHAT_MODEL": "acme/chat", "VOICEKIT_TTS_MODEL": "acme/speech", "VOICEKIT_SNAC_MODEL": "acme/snac"}
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
                                                  for name in ("chat", "speech", "snac")]
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
                         "models--acme--speech/config.json", "models--acme--speech/model.safetensors"]
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


@pytest.fixture
def deploy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("HF_TOKEN", "VOICEKIT_PASSWORD", "VOICEKIT_PRESET", "VOICEKIT_POD_MODE", "VOICEKIT_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_good_key")
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
    for text in ('name: "voicekit"', 'imageName: "ghcr.io/voicekit/voicekit:latest"',
                 'dockerArgs: "bash /opt/voicekit/runpod/start.sh"', 'ports: "7860/http,8888/http"',
                 'volumeMountPath: "/workspace"', "volumeInGb: 60", "containerDiskInGb: 30", "isPublic: false",
                 '{ key: "HF_TOKEN", value: "" }', '{ key: "HF_HOME", value: "/workspace/hf" }'):
        assert text in template, text
    assert "hf_test_token" not in template, "secrets stay out of the template"
    for text in ('gpuTypeId: "NVIDIA GeForce RTX 4090"', "cloudType: SECURE", "gpuCount: 1",
                 'imageName: "ghcr.io/voicekit/voicekit:latest"', 'ports: "7860/http,8888/http"',
                 'volumeMountPath: "/workspace"', "volumeInGb: 60", 'templateId: "tpl123"',
                 '{ key: "HF_TOKEN", value: "hf_test_token" }', '{ key: "VOICEKIT_POD_MODE", value: "auto" }'):
        assert text in pod, text
    assert "https://console.runpod.io/deploy?template=tpl123" in out.out
    assert "https://pod123-7860.proxy.runpod.net" in out.out and "https://pod123-8888.proxy.runpod.net" in out.out
    assert "rpa_good_key" not in out.out + out.err and "hf_test_token" not in out.out + out.err


def test_deploy_reuses_an_existing_template(deploy: Any, stand_in: StandIn,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.templates = [{"id": "other", "name": "something", "imageName": "x"},
                          {"id": "tplOLD", "name": "voicekit", "imageName": "ghcr.io/voicekit/voicekit:latest"}]
    assert deploy.main(["--template-only"]) == 0
    assert len(stand_in.queries) == 1 and "podTemplates" in stand_in.queries[0]
    assert "https://console.runpod.io/deploy?template=tplOLD" in capsys.readouterr().out


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


def test_template_json_matches_the_pod_layout() -> None:
    template = json.loads((ROOT / "runpod" / "template.json").read_text())
    assert template["ports"] == "7860/http,8888/http" and template["volumeMountPath"] == "/workspace"
    keys = {item["key"] for item in template["env"]}
    assert {"HF_TOKEN", "VOICEKIT_PASSWORD", "VOICEKIT_PRESET"} <= keys
    assert all(item.get("description") for item in template["env"])
    assert "runpod/start.sh" in template["dockerStartCmd"]
    dockerfile = (ROOT / "runpod" / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM runpod/pytorch:") or "\nFROM runpod/pytorch:" in dockerfile
    assert "/opt/voicekit" in dockerfile and "requirements-gpu.txt" in dockerfile
