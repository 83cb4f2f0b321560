"""What this machine can run: every probe of CUDA, vLLM and llama.cpp lives here.

`auto` (settings), the wiring (build.py), SNAC, Qwen3 and `doctor` all ask these functions; nothing else in
voicekit touches `torch.cuda`. Each probe imports its library lazily and answers "no" instead of raising when
the library is missing or broken (doctor explains why).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class TorchFacts:
    """What torch says about itself: its version (None: not installed), CUDA build, and whether CUDA works."""

    version: str | None
    cuda_build: str | None
    sees_cuda: bool


def torch_facts() -> TorchFacts:
    """Probe torch (import and `torch.cuda.is_available()`)."""
    try:
        import torch
    except Exception:  # a broken install raises more than ImportError
        return TorchFacts(None, None, False)
    return TorchFacts(torch.__version__, getattr(torch.version, "cuda", None), bool(torch.cuda.is_available()))


def cuda_available() -> bool:
    """True when torch can use a CUDA device."""
    return torch_facts().sees_cuda


def torch_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``."""
    return "cuda" if cuda_available() else "cpu"


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of CUDA device 0, or None when torch or a GPU is missing."""
    if not cuda_available():
        return None
    try:
        import torch

        major, minor = torch.cuda.get_device_capability(0)
    except Exception:  # a broken driver: no GPU dtype to pick (doctor explains GPU problems)
        return None
    return int(major), int(minor)


def cuda_device_name() -> str | None:
    """The name of CUDA device 0 ("NVIDIA H100 80GB HBM3"), or None."""
    if not cuda_available():
        return None
    try:
        import torch

        return str(torch.cuda.get_device_name(0))
    except Exception:
        return None


def vllm_version() -> str | None:
    """vLLM's version when it imports, else None (importing it takes seconds)."""
    try:
        import vllm
    except Exception:  # a broken vLLM install raises more than ImportError
        return None
    return str(getattr(vllm, "__version__", "unknown"))


def llama_cpp_facts() -> tuple[str, bool] | None:
    """(llama-cpp-python's version, whether the build can offload layers to a GPU), None when not installed."""
    try:
        import llama_cpp
    except Exception:
        return None
    return str(getattr(llama_cpp, "__version__", "unknown")), bool(llama_cpp.llama_supports_gpu_offload())


def llama_cpp_offload(requested: int) -> int:
    """Layers to put on the GPU: `requested` (-1: all) when this llama.cpp build can offload (Metal, CUDA), else 0."""
    facts = llama_cpp_facts()
    return requested if facts is not None and facts[1] else 0


def choose_preset(torch_version: str | None, sees_cuda: bool, vllm_installed: bool) -> tuple[str, str]:
    """The rule behind the `auto` preset, from the facts: (preset, reason)."""
    if torch_version is None:
        return "cpu", "torch is not installed"
    if not sees_cuda:
        return "cpu", f"torch {torch_version} sees no CUDA device"
    if not vllm_installed:
        return "cpu", "CUDA works but vLLM is not installed (pip install -r requirements-gpu.txt)"
    return "gpu", "torch sees CUDA and vLLM is installed"


def auto_preset() -> tuple[str, str]:
    """Pick `gpu` when torch sees CUDA and vLLM imports, else `cpu`; return (preset, reason)."""
    facts = torch_facts()
    # importing vLLM is slow: only worth it when a GPU is usable
    has_vllm = facts.sees_cuda and vllm_version() is not None
    return choose_preset(facts.version, facts.sees_cuda, has_vllm)


# -- the NVIDIA driver (nvidia-smi), which may see a GPU torch cannot use ----------------------------


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


def nvidia_smi_cuda_version(binary: str | None = None) -> str | None:
    """The highest CUDA version the NVIDIA driver supports, from `nvidia-smi`'s header; None without one."""
    binary = binary or shutil.which("nvidia-smi")
    if not binary:
        return None
    try:
        result = subprocess.run([binary], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_cuda_version(result.stdout) if result.returncode == 0 else None


def parse_cuda_version(header: str) -> str | None:
    """"12.4" from nvidia-smi's "| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |"."""
    match = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", header)
    return f"{match[1]}.{match[2]}" if match else None
