"""`voicekit doctor`: what this machine can run, and why `auto` picks the preset it picks.

The case users hit most on rented GPUs: `nvidia-smi` lists a GPU but torch sees none (a CPU-only torch
wheel, or a CUDA build newer than the driver). The report names that case and what to do.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from voicekit.settings import choose_preset


@dataclass
class Report:
    """Facts gathered by `diagnose()`; `advice` holds the lines a user should act on."""

    python: str
    torch: str | None
    torch_cuda_build: str | None
    torch_sees_cuda: bool
    nvidia_smi: list[str] | None  # one line per GPU, None when nvidia-smi is missing or fails
    vllm: str | None
    llama_cpp: tuple[str, bool] | None  # (version, can offload layers to a GPU), None when not installed
    preset: str
    reason: str
    advice: list[str] = field(default_factory=list)


def nvidia_smi_gpus(binary: str | None = None) -> list[str] | None:
    """GPUs listed by `nvidia-smi` ("name, memory, driver" lines), or None when it is missing or fails."""
    binary = binary or shutil.which("nvidia-smi")
    if not binary:
        return None
    try:
        result = subprocess.run(
            [binary, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _torch_facts() -> tuple[str | None, str | None, bool]:
    try:
        import torch
    except ImportError:
        return None, None, False
    return torch.__version__, getattr(torch.version, "cuda", None), bool(torch.cuda.is_available())


def _vllm_version() -> str | None:
    try:
        import vllm
    except Exception:  # a broken vLLM install raises more than ImportError
        return None
    return getattr(vllm, "__version__", "unknown")


def _llama_cpp_facts() -> tuple[str, bool] | None:
    try:
        import llama_cpp
    except Exception:  # a missing or broken build: nothing llama.cpp can run
        return None
    return getattr(llama_cpp, "__version__", "unknown"), bool(llama_cpp.llama_supports_gpu_offload())


def diagnose(gpus: list[str] | bool | None = False) -> Report:
    """Collect the facts (pass `gpus` to stand in for nvidia-smi's answer in tests)."""
    torch_version, cuda_build, sees_cuda = _torch_facts()
    smi = nvidia_smi_gpus() if gpus is False else gpus
    vllm_version = _vllm_version()
    report = Report(
        python=f"{platform.python_version()} ({sys.executable})", torch=torch_version,
        torch_cuda_build=cuda_build, torch_sees_cuda=sees_cuda, nvidia_smi=smi or None,  # type: ignore[arg-type]
        vllm=vllm_version, llama_cpp=_llama_cpp_facts(), preset="cpu", reason="",
    )
    report.preset, report.reason = choose_preset(torch_version, sees_cuda, vllm_version is not None)
    report.advice = _advice(report)
    return report


def _advice(report: Report) -> list[str]:
    advice: list[str] = []
    if report.nvidia_smi and not report.torch_sees_cuda:
        if report.torch is None:
            advice.append("nvidia-smi sees a GPU but torch is not installed: pip install -r requirements-gpu.txt")
        elif not report.torch_cuda_build:
            advice.append(
                f"nvidia-smi sees a GPU but torch {report.torch} is a CPU-only build: install a CUDA build "
                "(pip install -r requirements-gpu.txt)"
            )
        else:
            advice.append(
                f"nvidia-smi sees a GPU but torch (built for CUDA {report.torch_cuda_build}) cannot use it: the "
                "driver is probably older than that CUDA version (compare the driver above with NVIDIA's CUDA "
                "compatibility table), or CUDA_VISIBLE_DEVICES hides the GPU; install a torch built for an "
                "older CUDA or update the driver"
            )
    if report.torch_sees_cuda and report.vllm is None:
        advice.append("the GPU works but vLLM is missing: pip install -r requirements-gpu.txt for the gpu preset")
    if report.nvidia_smi and report.llama_cpp and not report.llama_cpp[1]:
        advice.append(
            "llama-cpp-python is a CPU-only build, so GGUF models (the cpu preset's chat model, Orpheus GGUF) "
            "ignore the GPU: CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-cache-dir "
            "llama-cpp-python builds one with CUDA"
        )
    if not report.nvidia_smi and report.preset == "cpu":
        advice.append("no NVIDIA GPU found: the cpu preset (SmolLM2 + Piper) runs everything on this machine")
    return advice


def _llama_cpp_line(facts: tuple[str, bool] | None) -> str:
    if facts is None:
        return "not installed"
    version, offload = facts
    return f"{version} (GPU offload: {'yes, Metal or CUDA build' if offload else 'no, CPU build'})"


def format_report(report: Report) -> str:
    """Human-readable report."""
    gpus = "; ".join(report.nvidia_smi) if report.nvidia_smi else "not found (no nvidia-smi or no GPU)"
    torch_line = "not installed" if report.torch is None else (
        f"{report.torch} (CUDA build: {report.torch_cuda_build or 'none, CPU only'}; "
        f"sees CUDA: {'yes' if report.torch_sees_cuda else 'no'})"
    )
    lines = [
        f"python      {report.python}",
        f"torch       {torch_line}",
        f"nvidia-smi  {gpus}",
        f"vllm        {report.vllm or 'not installed'}",
        f"llama.cpp   {_llama_cpp_line(report.llama_cpp)}",
        f"auto preset {report.preset}: {report.reason}",
    ]
    lines += [f"advice      {line}" for line in report.advice]
    return "\n".join(lines)
