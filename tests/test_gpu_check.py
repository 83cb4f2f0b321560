"""scripts/gpu_check.sh on this GPU-less machine: every way it must stop early, fast, with one clear line.

The GPU steps themselves (install, benchmarks) need a CUDA machine; here `nvidia-smi` is either absent or the
stand-in from test_cli.py (the host's tool cannot exist here), and torch is the CPU wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import fake_nvidia_smi

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def gpu_check(*args: str, cwd: Path, path: str, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("VOICEKIT_", "GPU_CHECK_")) and key not in ("OUT", "PYTHON")}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**clean, "PATH": path, **env})


def failing_nvidia_smi(folder: Path) -> str:
    """A PATH whose `nvidia-smi` fails as it does when the driver is not loaded."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                      "driver. Make sure that the latest NVIDIA driver is installed and running.\"\nexit 9\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{SYSTEM_PATH}"


def test_without_a_gpu_it_exits_2_at_once_and_writes_nothing(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi", path=SYSTEM_PATH):
        pytest.skip("this machine has nvidia-smi")
    started = time.monotonic()
    result = gpu_check(cwd=tmp_path, path=SYSTEM_PATH)
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    assert result.stderr == ("error: no NVIDIA GPU found (no nvidia-smi): gpu_check.sh measures the gpu preset on a "
                             "CUDA machine\n")
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "no gpu-check-<date> folder"


@pytest.mark.parametrize("make_path, expected", [
    (failing_nvidia_smi, "error: nvidia-smi failed (NVIDIA-SMI has failed because it couldn't communicate with the "
                         "NVIDIA driver."),
    (lambda folder: fake_nvidia_smi(folder, "12.4"),
     "error: the NVIDIA driver supports CUDA 12.4 at most; the gpu preset's torch needs CUDA 13.0 (driver R580 or "
     "newer): use a host or pod with a newer driver (on RunPod filter GPUs by CUDA version 13.0)"),
])
def test_an_unusable_gpu_exits_2_with_one_line(tmp_path: Path, make_path, expected: str) -> None:
    out = tmp_path / "out"
    result = gpu_check(cwd=tmp_path, path=make_path(tmp_path / "bin"), OUT=str(out))
    assert result.returncode == 2
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    assert result.stdout == "" and not out.exists()


def test_a_gpu_torch_cannot_use_stops_after_doctor_with_its_advice(tmp_path: Path) -> None:
    """A driver new enough, but this environment's torch is the CPU wheel: doctor's advice, exit 1, no benchmark."""
    out = tmp_path / "out"
    result = gpu_check("--no-install", cwd=tmp_path, path=fake_nvidia_smi(tmp_path / "bin", "13.0"), OUT=str(out),
                       PYTHON=sys.executable, HF_TOKEN="hf_not_a_real_token")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "GPU: NVIDIA A40, 46068 MiB, 580.82.07 (driver supports CUDA 13.0)" in result.stdout
    assert "HF_TOKEN" not in result.stdout and "hf_not_a_real_token" not in result.stdout
    assert "FAILED: the gpu preset cannot run in this environment" in result.stdout
    assert sorted(path.name for path in out.iterdir()) == ["doctor.txt", "steps.log"]
    steps = (out / "steps.log").read_text()
    assert "auto preset cpu" in steps and "is a CPU-only build" in steps


def test_missing_hf_token_is_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = gpu_check("--no-install", cwd=tmp_path, path=fake_nvidia_smi(tmp_path / "bin", "13.0"), OUT=str(out),
                       PYTHON=sys.executable, HOME=str(tmp_path), HF_HOME=str(tmp_path / "hf"), HF_TOKEN="",
                       HUGGING_FACE_HUB_TOKEN="")
    assert result.returncode == 1  # it goes on (cached weights load without a token) and stops at doctor
    assert "warning: HF_TOKEN is not set: google/gemma-2-2b-it and canopylabs/orpheus-3b-0.1-ft are gated" in (
        result.stdout)


def test_help_documents_the_steps_and_bad_options_exit_2(tmp_path: Path) -> None:
    result = gpu_check("--help", cwd=tmp_path, path=SYSTEM_PATH)
    assert result.returncode == 0 and not list(tmp_path.iterdir())
    for words in ("python -m voicekit doctor", "bench snac --device cuda --streams 4", "bench pipeline --preset gpu",
                  "HF_TOKEN", "OUT (default gpu-check-<date>/", "exit 2", "--quick", "--no-install", "--venv DIR",
                  "about 12 minutes", "bench talk --preset gpu", "Exit status"):
        assert words in result.stdout, words
    bad = gpu_check("--fast", cwd=tmp_path, path=SYSTEM_PATH)
    assert bad.returncode == 2 and bad.stderr == "error: unknown option: --fast (try --help)\n"


def test_the_script_passes_shellcheck() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
