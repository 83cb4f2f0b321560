"""`python -m voicekit`: real runs on the bundled models, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicekit.audio import read_wav
from voicekit.doctor import cuda_driver_problem, diagnose, format_report, parse_cuda_version


def voicekit_cli(*args: str, cwd: Path, stdin: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "voicekit", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=300, env={**_clean_env(), "PYTHONPATH": str(root), **(env or {})})


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("VOICEKIT_")}


def test_say_writes_a_wav(tmp_path: Path) -> None:
    result = voicekit_cli("say", "Hello from the command line.", "-o", "hello.wav", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples, rate = read_wav(tmp_path / "hello.wav")
    assert rate == 22050 and len(samples) / rate > 1.0
    assert "wrote hello.wav" in result.stdout


def test_say_reads_standard_input(tmp_path: Path) -> None:
    result = voicekit_cli("say", "-", "-o", "stdin.wav", cwd=tmp_path, stdin="Words from a pipe.")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stdin.wav").stat().st_size > 10_000


def test_chat_prints_reply_and_timings(tmp_path: Path) -> None:
    result = voicekit_cli("chat", "Hello", "--json", "-o", "reply.wav", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["reply"]
    assert set(printed["timings"]) >= {"ttfa_s", "llm_s", "tts_s", "audio_s", "rtf", "sentences", "total_s"}
    samples, rate = read_wav(tmp_path / "reply.wav")
    assert len(samples) / rate == pytest.approx(printed["timings"]["audio_s"], abs=0.01)


def test_voices_lists_the_default(tmp_path: Path) -> None:
    result = voicekit_cli("voices", cwd=tmp_path)
    assert result.returncode == 0
    first = result.stdout.splitlines()[0]
    assert first.split()[:2] == ["en_US-joe-medium", "piper"] and first.endswith("medium quality  (default)")


@pytest.mark.parametrize("args, expected", [
    (("say", ""), "error: the text is empty"),
    (("say", "   "), "error: the text is empty"),
    (("say", "x" * 2001), "error: the text is 2001 characters long; the limit is 2000"),
    (("say", "Hello", "--voice", "tara"), "error: unknown voice 'tara'; available voices: en_US-joe-medium"),
    (("chat", "", "-o", "x.wav"), "error: the message is empty"),
    (("say", "Hi", "--preset", "tpu"), "error: preset must be one of cpu, gpu, laptop, auto, not 'tpu'"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, args: tuple, expected: str) -> None:
    result = voicekit_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(expected)
    assert result.stderr.count("\n") == 1, "exactly one line"
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.wav")), "no file is written for bad input"


def test_doctor_runs_and_names_the_preset(tmp_path: Path) -> None:
    result = voicekit_cli("doctor", cwd=tmp_path)
    assert result.returncode == 0
    assert "auto preset cpu" in result.stdout and "python" in result.stdout
    assert "llama.cpp   0.3.36 (GPU offload: no, CPU build)" in result.stdout
    assert "chat model  SmolLM2-135M-Instruct.Q4_1.gguf on llamacpp (preset cpu" in result.stdout
    assert "voices      piper, kokoro: none here" in result.stdout or "voices      piper, kokoro: 28" in result.stdout


def test_doctor_explains_gpu_seen_by_nvidia_smi_but_not_torch() -> None:
    report = diagnose(gpus=["NVIDIA A40, 46068 MiB, 535.104"])
    text = format_report(report)
    assert "NVIDIA A40" in text
    if report.torch is None:
        assert "torch is not installed" in text
    elif not report.torch_sees_cuda:
        assert "nvidia-smi sees a GPU but torch" in text
    assert report.preset == "cpu"
    assert report.llama_cpp == ("0.3.36", False)
    assert "llama-cpp-python is a CPU-only build" in text and "-DGGML_CUDA=on" in text


# nvidia-smi is the host's tool and cannot exist here: this stand-in answers the two calls doctor makes, as
# nvidia-smi 550 / 580 print them, and fails on any other arguments.
NVIDIA_SMI = """#!/bin/sh
if [ "$*" = "--query-gpu=name,memory.total,driver_version --format=csv,noheader" ]; then
    echo "NVIDIA A40, 46068 MiB, {driver}"
elif [ "$#" -eq 0 ]; then
    cat <<'END'
Mon Dec  7 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}             Driver Version: {driver}     CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  NVIDIA A40                     On  |   00000000:00:05.0 Off |                    0 |
|  0%   30C    P8             22W /  300W |       1MiB /  46068MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
END
else
    echo "unexpected arguments: $*" >&2
    exit 9
fi
"""
DRIVERS = {"12.4": "550.127.05", "13.0": "580.82.07"}


def fake_nvidia_smi(folder: Path, cuda: str) -> str:
    """A PATH with, in front, an `nvidia-smi` whose driver supports CUDA `cuda`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(NVIDIA_SMI.format(driver=DRIVERS[cuda], cuda=cuda))
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("driver_cuda, torch_cuda, sees_cuda, expected", [
    ("12.4", "13.0", False, "the NVIDIA driver is too old for this torch: it supports CUDA 12.4 at most, torch is "
                            "built for CUDA 13.0"),
    ("12.8", "13.0", False, "driver R580 or newer; on RunPod filter GPUs by CUDA version 13.0"),
    ("12.9", "12.10", False, "torch is built for CUDA 12.10"),  # minor versions compare as numbers
    ("13.0", "13.0", False, None),  # the driver is new enough: the problem is elsewhere
    ("13.1", "13.0", False, None),
    ("12.4", "13.0", True, None),  # torch uses the GPU (NVIDIA's compat package): nothing to fix
    (None, "13.0", False, None),  # no nvidia-smi
    ("12.4", None, False, "too old for the gpu preset: it supports CUDA 12.4 at most, and "
                          "requirements-gpu.txt installs a torch built for CUDA 13.0"),  # a CPU-only torch build
    ("13.0", None, False, None),
])
def test_cuda_driver_problem(driver_cuda: str | None, torch_cuda: str | None, sees_cuda: bool,
                             expected: str | None) -> None:
    line = cuda_driver_problem(driver_cuda, torch_cuda, sees_cuda)
    if expected is None:
        assert line is None
    else:
        assert line is not None and expected in line and "\n" not in line


def test_parse_cuda_version_from_the_nvidia_smi_header() -> None:
    assert parse_cuda_version(NVIDIA_SMI.format(driver="580.82.07", cuda="13.0")) == "13.0"
    assert parse_cuda_version("| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |") == "12.4"
    assert parse_cuda_version("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver") is None


def test_doctor_says_the_driver_is_too_old_for_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "old", "12.4"))
    report = diagnose(torch_facts=("2.13.0+cu130", "13.0", False))  # the CUDA 13 torch on a CUDA 12.4 driver
    text = format_report(report)
    assert report.nvidia_smi == ["NVIDIA A40, 46068 MiB, 550.127.05"] and report.driver_cuda == "12.4"
    assert "nvidia-smi  NVIDIA A40, 46068 MiB, 550.127.05 (driver supports CUDA 12.4)" in text
    assert ("auto preset cpu: torch 2.13.0+cu130 sees no CUDA device, although nvidia-smi lists a GPU (its driver "
            "supports CUDA 12.4 at most, torch is built for CUDA 13.0)") in text
    advice = [line for line in text.splitlines() if line.startswith("advice")]
    assert any("driver is too old for this torch" in line and "runpod/README.md" in line for line in advice)
    assert not any("CUDA_VISIBLE_DEVICES" in line for line in advice), "the cause is known: no guessing"

    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "new", "13.0"))
    report = diagnose(torch_facts=("2.13.0+cu130", "13.0", False))
    assert report.driver_cuda == "13.0"
    assert not any("too old" in line for line in report.advice)
    assert any("the driver supports CUDA 13.0" in line and "CUDA_VISIBLE_DEVICES" in line for line in report.advice)


def test_doctor_cli_on_a_gpu_host_with_a_cpu_torch_and_an_old_driver(tmp_path: Path) -> None:
    result = voicekit_cli("doctor", cwd=tmp_path, env={"PATH": fake_nvidia_smi(tmp_path / "bin", "12.4")})
    assert result.returncode == 0, result.stderr
    assert "(driver supports CUDA 12.4)" in result.stdout
    assert "sees no CUDA device, although nvidia-smi lists a GPU (see advice)" in result.stdout
    assert "is a CPU-only build" in result.stdout  # this machine's torch is the CPU wheel
    assert "advice      the NVIDIA driver is too old for the gpu preset: it supports CUDA 12.4 at most" in result.stdout
