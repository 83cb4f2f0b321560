"""`python -m voicekit`: real runs on the bundled models, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voicekit.audio import read_wav
from voicekit.doctor import diagnose, format_report


def voicekit_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "voicekit", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=300, env={**_clean_env(), "PYTHONPATH": str(root)})


def _clean_env() -> dict[str, str]:
    import os

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
    assert "en_US-joe-medium  (default)" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (("say", ""), "error: the text is empty"),
    (("say", "   "), "error: the text is empty"),
    (("say", "x" * 2001), "error: the text is 2001 characters long; the limit is 2000"),
    (("say", "Hello", "--voice", "tara"), "error: unknown voice 'tara'; available voices: en_US-joe-medium"),
    (("chat", "", "-o", "x.wav"), "error: the message is empty"),
    (("say", "Hi", "--preset", "tpu"), "error: preset must be one of cpu, gpu, auto, not 'tpu'"),
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
