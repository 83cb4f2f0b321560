"""Checks the pod's supervisor (runpod/supervise.py) runs; each prints one line and says by its exit status what
it found.

    python runpod/checks.py driver       # 0: the driver starts and supports the gpu preset's CUDA; 1: why not
    python runpod/checks.py gpu          # 0: the gpu preset can run here; 1: why not (one line)
    python runpod/checks.py toolkit      # 0: nvcc matches torch's CUDA (FlashInfer can JIT-compile); 1: why not
    python runpod/checks.py health URL   # 0: /health says ok; 1: it answered an error (the reason); 2: no answer
    python runpod/checks.py sizes REPO...  # {"repo": bytes its download takes, or null} (JSON, one line)

`driver` runs before anything is installed, in a second: `nvidia-smi` and the driver library itself (libcuda via
ctypes: cuInit, cuDriverGetVersion; NVIDIA's forward-compatibility libraries count), against the CUDA build of the
torch that requirements-gpu.txt installs. `gpu` needs torch to see the GPU, a tiny CUDA operation to succeed and
vLLM to import; when torch cannot see the GPU it compares the CUDA version torch was built for with the one the
driver supports (`nvidia-smi`'s header), the usual reason on rented GPUs. Standard library only, apart from the
torch and vLLM `gpu` checks and the huggingface_hub `sizes` asks.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEALTH_TIMEOUT_S = 5.0
#: The CUDA build of the torch requirements-gpu.txt installs (vllm 0.32.0 pins torch 2.13.0, a CUDA 13.0 build).
#: voicekit/doctor.py's GPU_TORCH_CUDA says the same (a test keeps them equal): this file runs before voicekit is
#: installed, so it cannot import it.
POD_TORCH_CUDA = "13.0"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def driver_cuda(smi_output: str) -> str | None:
    """The CUDA version the driver supports, from `nvidia-smi`'s header ("CUDA Version: 12.4")."""
    found = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", smi_output)
    return found.group(1) if found else None


def gpu_problem(torch_version: str | None, torch_cuda: str | None, available: bool, driver: str | None,
                gpu_listed: bool, op_error: str | None = None, vllm_error: str | None = None) -> str | None:
    """Why the gpu preset cannot run (one line), or None when it can. Plain facts in, so tests can pass any."""
    if torch_version is None:
        return "torch is not installed"
    if not torch_cuda:
        return f"torch {torch_version} is a CPU-only build"
    if not available:
        if driver and _version(driver) < _version(torch_cuda):
            return (f"torch {torch_version} cannot use the GPU (driver too old for CUDA {torch_cuda}: "
                    f"nvidia-smi says {driver})")
        if not gpu_listed:
            return f"torch {torch_version} sees no GPU (nvidia-smi lists none)"
        return (f"torch {torch_version} cannot use the GPU (torch.cuda.is_available() is False; "
                f"nvidia-smi says CUDA {driver or 'unknown'})")
    if op_error:
        return f"torch {torch_version} cannot run on this GPU ({op_error})"
    if vllm_error:
        return f"vLLM does not import ({vllm_error})"
    return None


def nvidia_smi() -> tuple[str | None, bool]:
    """(driver CUDA version, whether a GPU is listed), from nvidia-smi; (None, False) without it."""
    binary = shutil.which("nvidia-smi")
    if not binary:
        return None, False
    try:
        header = subprocess.run([binary], capture_output=True, text=True, timeout=30, check=False).stdout
        listed = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return driver_cuda(header), any(line.startswith("GPU") for line in listed.splitlines())


def driver_problem(listed: bool, smi_cuda: str | None, library_cuda: str | None, start_error: str | None,
                   needed: str = POD_TORCH_CUDA) -> str | None:
    """Why this host's driver cannot run the gpu preset's torch (one line), or None. Plain facts in: whether
    nvidia-smi lists a GPU, the CUDA version in its header, the one the driver library reports (with NVIDIA's
    forward-compatibility libraries, newer than nvidia-smi's), and why cuInit failed."""
    if not listed:
        return "nvidia-smi lists no GPU"
    if start_error:
        return f"the CUDA driver does not start ({start_error}; nvidia-smi says CUDA {smi_cuda or 'unknown'})"
    version = library_cuda or smi_cuda
    if version and _version(version) < _version(needed):
        return (f"the driver supports CUDA {version}, the gpu preset's torch is a CUDA {needed} build (NVIDIA "
                f"driver R580 or newer): deploy on a host that offers CUDA {needed}")
    return None


def cuda_library() -> tuple[str | None, str | None]:
    """(the CUDA version libcuda reports, why cuInit failed or None), from the driver library itself (ctypes)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        return None, f"libcuda.so.1 does not load: {_first_line(error)}"
    number = ctypes.c_int(0)
    version = None
    if lib.cuDriverGetVersion(ctypes.byref(number)) == 0 and number.value:
        version = f"{number.value // 1000}.{number.value % 1000 // 10}"
    status = lib.cuInit(0)
    if status != 0:
        name = ctypes.c_char_p()
        lib.cuGetErrorName(status, ctypes.byref(name))
        return version, f"cuInit: {name.value.decode() if name.value else f'error {status}'}"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return version, "cuDeviceGetCount: no device"
    return version, None


def check_driver() -> tuple[str | None, str]:
    """(problem or None, the line to log): nvidia-smi and libcuda, no torch (it is not installed yet)."""
    smi_cuda, listed = nvidia_smi()
    library_cuda, start_error = cuda_library() if listed else (None, None)
    problem = driver_problem(listed, smi_cuda, library_cuda, start_error)
    return problem, problem or f"the driver starts and supports CUDA {library_cuda or smi_cuda}"


def check_gpu() -> str | None:
    """Gather the facts on this machine (imports torch, runs one CUDA op, imports vLLM) and judge them."""
    driver, listed = nvidia_smi()
    try:
        import torch
    except Exception:  # a broken torch install raises more than ImportError
        return gpu_problem(None, None, False, driver, listed)
    version, cuda = torch.__version__, getattr(torch.version, "cuda", None)
    available = bool(cuda) and bool(torch.cuda.is_available())
    op_error = vllm_error = None
    if available:
        try:  # "no kernel image is available" shows up here, e.g. on cards the build dropped
            value = (torch.ones(8, device="cuda") * 2).sum().item()
            if value != 16:
                op_error = f"ones(8) * 2 summed to {value}, not 16"
        except Exception as error:
            op_error = _first_line(error)
        if op_error is None:
            try:
                import vllm  # noqa: F401
            except Exception as error:
                vllm_error = _first_line(error)
    return gpu_problem(version, cuda, available, driver, listed, op_error, vllm_error)


def toolkit_problem(nvcc_release: str | None, torch_cuda: str | None) -> str | None:
    """Why FlashInfer's JIT kernels would not build against torch's CUDA, or None when nvcc matches it."""
    if not torch_cuda:
        return "torch has no CUDA build"
    if not nvcc_release:
        return f"no nvcc found (CUDA_HOME, PATH, /usr/local/cuda) to match torch's CUDA {torch_cuda}"
    if _version(nvcc_release) != _version(torch_cuda):
        return f"nvcc {nvcc_release} does not match torch's CUDA {torch_cuda}"
    return None


def nvcc_release() -> str | None:
    """The release of the nvcc FlashInfer would use ("13.0"), or None."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    candidates += [Path(found) for found in [shutil.which("nvcc")] if found]
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for binary in candidates:
        if binary.is_file():
            try:
                text = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30,
                                      check=False).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            found = re.search(r"release ([0-9]+\.[0-9]+)", text)
            if found:
                return found.group(1)
    return None


def check_toolkit() -> tuple[str | None, str]:
    """(problem or None, the line to log)."""
    try:
        import torch

        torch_cuda = getattr(torch.version, "cuda", None)
    except Exception:
        torch_cuda = None
    release = nvcc_release()
    problem = toolkit_problem(release, torch_cuda)
    return problem, problem or f"nvcc {release} matches torch's CUDA {torch_cuda}"


def check_health(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> tuple[int, str]:
    """(0, "ok") when /health answers 200; (1, reason) for an error answer; (2, why) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return 0, "ok"
    except urllib.error.HTTPError as error:
        body = error.read(4096)
        try:
            reason = str(json.loads(body).get("reason") or "")
        except (ValueError, AttributeError):
            reason = ""
        return 1, f"/health answered {error.code}" + (f": {reason}" if reason else "")
    except (OSError, ValueError) as error:  # refused, reset, timed out: starting up or restarting
        return 2, f"no answer from {url} ({type(error).__name__})"


def model_sizes(repos: Sequence[str], token: str | None = None,
                endpoint: str | None = None) -> dict[str, int | None]:
    """Bytes each hub repo's download takes (the files `voicekit.hub.fetch_model` fetches: its IGNORE_PATTERNS left
    out), None for a repo the hub does not list. The token comes from HF_TOKEN unless given."""
    sys.path.insert(0, str(ROOT))
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    from voicekit.hub import IGNORE_PATTERNS

    api, sizes = HfApi(endpoint=endpoint), {}
    for repo in repos:
        try:
            files = [item for item in api.list_repo_tree(repo, recursive=True, token=token or None)
                     if isinstance(item, RepoFile)]
        except Exception:  # gated, offline, unknown: the download says why; the progress shows bytes only
            sizes[repo] = None
            continue
        kept = filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS, key=lambda item: item.path)
        sizes[repo] = sum(item.size for item in kept)
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["driver"]:
        problem, line = check_driver()
        print(line)
        return 1 if problem else 0
    if args and args[0] == "sizes":
        print(json.dumps(model_sizes(args[1:], os.environ.get("HF_TOKEN"))))
        return 0
    if args == ["gpu"]:
        problem = check_gpu()
        print(problem or "the GPU works with torch and vLLM imports")
        return 1 if problem else 0
    if args == ["toolkit"]:
        problem, line = check_toolkit()
        print(line)
        return 1 if problem else 0
    if len(args) == 2 and args[0] == "health":
        status, line = check_health(args[1])
        print(line)
        return status
    print("usage: checks.py driver | gpu | toolkit | health URL | sizes REPO...", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
