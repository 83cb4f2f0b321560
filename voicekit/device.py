"""What this machine can run: every probe of CUDA, vLLM and llama.cpp lives here.

`auto` (settings), the wiring (build.py), SNAC, Qwen3, the recognizer and `doctor` all ask these functions; nothing
else in voicekit touches `torch.cuda`. Each probe imports its library lazily and answers "no" instead of raising when
the library is missing or broken (doctor explains why).

CTranslate2 (faster-whisper's engine) is built for CUDA 12 and dlopens `libcublas.so.12` when it first runs a CUDA
model; vLLM's torch brings only CUDA 13 libraries. `load_cuda12_blas()` loads the cuBLAS 12 of the
`nvidia-cublas-cu12` wheel (requirements-gpu.txt) into the process first, so no LD_LIBRARY_PATH is needed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


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
    """Pick `gpu` when torch sees CUDA and vLLM imports, else `cpu`; return (preset, reason). (`auto` then takes
    `laptop` over `cpu` when its models are cached: voicekit.placement.preset_and_reason.)"""

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


def machine_facts() -> dict[str, str | int | None]:
    """What a figure was measured on: platform, processor, core count, Python (benchmarks and the capacity file)."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


# -- GPU memory ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuMemory:
    """CUDA device 0's memory in bytes: `used` counts every process on the card (the vLLM engine cores too),
    `torch_*` only this process's torch tensors (SNAC) and torch's cache."""

    name: str
    total: int
    free: int
    torch_allocated: int
    torch_reserved: int

    @property
    def used(self) -> int:
        return self.total - self.free

    def as_dict(self) -> dict[str, int | str]:
        return {"name": self.name, "total_bytes": self.total, "used_bytes": self.used, "free_bytes": self.free,
                "torch_allocated_bytes": self.torch_allocated, "torch_reserved_bytes": self.torch_reserved}


def gpu_memory(*, import_torch: bool = True) -> GpuMemory | None:
    """CUDA device 0's memory, or None without a usable GPU. `import_torch=False` answers None unless torch is
    imported already (a health check must not pay seconds for importing it on a kit that never needed it)."""
    if not import_torch and "torch" not in sys.modules:
        return None
    if not cuda_available():
        return None
    try:
        import torch

        free, total = torch.cuda.mem_get_info(0)
        return GpuMemory(str(torch.cuda.get_device_name(0)), int(total), int(free),
                         int(torch.cuda.memory_allocated(0)), int(torch.cuda.memory_reserved(0)))
    except Exception:  # a broken driver: no figures (doctor explains GPU problems)
        return None


def cuda_total_memory() -> int | None:
    """Total memory of CUDA device 0 in bytes, or None without a usable GPU."""
    memory = gpu_memory()
    return memory.total if memory is not None else None


# -- CUDA 12 libraries for CTranslate2 -----------------------------------------------------------------------

CUBLAS12 = ("libcublasLt.so.12", "libcublas.so.12")  # libcublas needs libcublasLt: loaded first
CUBLAS12_WHEEL = "nvidia-cublas-cu12"
CUBLAS12_HINT = f"pip install {CUBLAS12_WHEEL} (requirements-gpu.txt pins it)"


@dataclass(frozen=True)
class LibraryLoad:
    """What `load_cuda12_blas` did: `path` is the libcublas.so.12 now in the process (None: none), `reason` how
    it was found or why it was not."""

    path: str | None
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "reason": self.reason}


_loaded: dict[tuple[str, ...], LibraryLoad] = {}
_load_lock = threading.Lock()


def cuda12_blas_folders() -> list[Path]:
    """The `nvidia/cublas/lib` folders of the installed `nvidia-cublas-cu12` wheel, found without importing torch
    (`nvidia` is a namespace package that several NVIDIA wheels share)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folders = [Path(root) / "cublas" / "lib" for root in roots]
    return [folder for folder in folders if (folder / CUBLAS12[1]).is_file()]


def load_cuda12_blas(folders: Iterable[str | os.PathLike[str]] | None = None) -> LibraryLoad:
    """Load cuBLAS 12 (`libcublasLt.so.12`, then `libcublas.so.12`) into this process with RTLD_GLOBAL, so that
    CTranslate2's own dlopen of `libcublas.so.12` finds it by its name: from `folders` (default: the
    `nvidia-cublas-cu12` wheel's), else wherever the dynamic linker finds it (LD_LIBRARY_PATH, a system CUDA 12).

    Needs no GPU: loading a library runs none of it. Safe to call more than once (the answer is kept per folder
    list); never raises.
    """
    if not sys.platform.startswith("linux"):
        return LibraryLoad(None, f"not needed on {sys.platform}: CTranslate2's wheels there bring their own CUDA "
                                 "libraries or none")
    places = [Path(folder) for folder in folders] if folders is not None else cuda12_blas_folders()
    key = tuple(str(place) for place in places)
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = _load_blas(places)
        return _loaded[key]


def _load_blas(places: list[Path]) -> LibraryLoad:
    problems = []
    for place in places:
        paths = [place / name for name in CUBLAS12]
        if not all(path.is_file() for path in paths):
            problems.append(f"{place} has no {' and '.join(p.name for p in paths if not p.is_file())}")
            continue
        try:
            for path in paths:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as error:
            problems.append(f"{paths[-1]} does not load ({str(error).splitlines()[0]})")
            continue
        return LibraryLoad(str(paths[-1]), f"loaded from the {CUBLAS12_WHEEL} wheel's folder {place}")
    try:
        for name in CUBLAS12:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        where = f"; {'; '.join(problems)}" if problems else f" (no {CUBLAS12_WHEEL} wheel is installed)"
        return LibraryLoad(None, f"libcublas.so.12 not found: {str(error).splitlines()[0]}{where}; "
                                 f"{CUBLAS12_HINT}")
    return LibraryLoad(CUBLAS12[1], "found by the dynamic linker (LD_LIBRARY_PATH or a system CUDA 12)")


def ctranslate2_facts() -> tuple[str, int] | None:
    """(CTranslate2's version, the CUDA devices it sees), None when it is not installed. Seeing a device does not
    prove that its CUDA libraries load: that shows when a model first runs on it."""
    try:
        import ctranslate2
    except Exception:
        return None
    try:
        count = int(ctranslate2.get_cuda_device_count())
    except Exception:
        count = 0
    return str(getattr(ctranslate2, "__version__", "unknown")), count
