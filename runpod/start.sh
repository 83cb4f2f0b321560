#!/usr/bin/env bash
# voicekit pod start command (RunPod template "start command"; also the image's CMD).
#
#   bash runpod/start.sh            # serve until SIGTERM, restarting what exits
#   bash runpod/start.sh --once     # no restarts: the first service to exit stops everything, with its status
#
# Sets the environment defaults below, picks the Python, and execs runpod/supervise.py (standard library only),
# which does the rest: a status page on the port at once, the gpu preset's checks in seconds (the driver, HF_TOKEN,
# the token's access to the gated models; any failure: the cpu preset with the reason on the page, never an
# exit), the install once, the cpu preset serving while the GPU is prepared in the background (install, checks,
# downloads with progress on the page), then the switch to the gpu preset; JupyterLab; restarts with backoff and
# a health watch. runpod/README.md, "What start.sh does", has the details.
#
# Environment (all optional):
#   WORKSPACE            the volume (default /workspace): hf/ (HF_HOME), logs/, run/ (pid files, status.json),
#                        .voicekit-password
#   VOICEKIT_POD_MODE    gpu, cpu or auto (default: gpu when nvidia-smi lists a GPU)
#   VOICEKIT_PRESET      app.py --preset (default: the mode)
#   VOICEKIT_PASSWORD    password (or user:password) for the page, the API and JupyterLab; when unset one is
#                        generated once into $WORKSPACE/.voicekit-password and printed once to this log
#   HF_TOKEN             Hugging Face token (the gpu preset's Gemma 2 and Orpheus are gated; without it: cpu preset)
#   VOICEKIT_HOST        interface (default 0.0.0.0); VOICEKIT_PORT (7860); JUPYTER_PORT (8888)
#   VOICEKIT_JUPYTER     0 to skip JupyterLab
#   VOICEKIT_SKIP_INSTALL=1, VOICEKIT_SKIP_DOCTOR=1, VOICEKIT_SKIP_DOWNLOAD=1   skip a step
#   VOICEKIT_INSTALL_MARKER   marker file of the install step (default: in the Python environment)
#   VOICEKIT_HEALTH_INTERVAL  seconds between /health checks of the app (default 15; 0: no checks)
#   VLLM_CACHE_ROOT, FLASHINFER_WORKSPACE_BASE, TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR: compiled-kernel caches
#                        (default: under $WORKSPACE/cache, so a restarted pod does not compile again)
#   PYTHON               the interpreter (default python3, else python)

set -uo pipefail

for arg in "$@"; do
    case "$arg" in
        --once) ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "start.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export WORKSPACE="${WORKSPACE:-/workspace}"
export HF_HOME="${HF_HOME:-$WORKSPACE/hf}"
export HF_HUB_ENABLE_HF_TRANSFER="${HF_HUB_ENABLE_HF_TRANSFER:-0}"
# vLLM, FlashInfer (appends .cache/flashinfer), Triton and torch inductor compile kernels on first use: on the volume
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$WORKSPACE/cache/vllm}"
export FLASHINFER_WORKSPACE_BASE="${FLASHINFER_WORKSPACE_BASE:-$WORKSPACE/cache/flashinfer}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$WORKSPACE/cache/triton}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$WORKSPACE/cache/torchinductor}"
# RunPod's proxy cuts a request at 100 s: the app stops one before that, cleanly (docs/API.md, "Limits")
export VOICEKIT_REQUEST_TIMEOUT_S="${VOICEKIT_REQUEST_TIMEOUT_S:-95}"
export PYTHONUNBUFFERED=1
unset VOICEKIT_FALLBACK_REASON  # the supervisor sets it when the gpu preset cannot run here

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
if [[ -z "$PYTHON" ]]; then
    echo "[voicekit] ERROR: no python3 or python on PATH" >&2
    exit 1
fi
export PYTHON
exec "$PYTHON" "$ROOT/runpod/supervise.py" "$@"
