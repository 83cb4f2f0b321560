#!/usr/bin/env bash
# Measure the gpu preset on a CUDA machine in one go, and keep everything it printed in one folder.
#
#   bash scripts/gpu_check.sh                 # install if needed, doctor, SNAC on CUDA, the pipeline benchmark
#   bash scripts/gpu_check.sh --quick         # fewer pipeline cases, one run each (a smoke test)
#   OUT=/workspace/gpu-check bash scripts/gpu_check.sh --venv .venv-gpu
#
# Steps, each under its own time limit (`timeout`); logs and JSON go to $OUT:
#   1. a GPU (nvidia-smi lists one) whose driver runs CUDA 13.0 (R580 or newer), as requirements-gpu.txt's
#      torch 2.13 needs; if not: one `error:` line, exit 2, nothing written
#   2. pip install -r requirements-gpu.txt, once per requirements content (runpod/start.sh's marker)  install.log
#   3. python -m voicekit doctor; stops here unless the auto preset is gpu (torch sees CUDA, vLLM imports)
#                                                                                                    doctor.txt
#   4. python -m voicekit bench snac --device cuda --streams 4                               snac.json, snac.log
#   5. python -m voicekit bench pipeline --preset gpu --repeats 2 (loads the gpu preset)
#                                                                                    pipeline.json, pipeline.log
#   6. python -m voicekit serve --preset gpu + bench load --clients 16 --requests 4 (not with --quick)
#                                                                                    load.json, serve.log
#      and bench talk --preset gpu --repeats 2: spoken turns, barge-in (not with --quick)   talk.json, talk.log
#   7. a summary of the figures, printed and written to                                             summary.txt
# Time: about 12 minutes on an H100-class GPU with the packages installed and the weights in the HF cache
# (limits: doctor 60 s, snac 90 s, pipeline 420 s, load 300 s, talk 300 s); a first install adds a few minutes (limit 1200 s), and the
# first vLLM start compiles its graphs (cached for the next run).
#
# Options: --quick, --repeats N (pipeline runs per case, default 2), --no-install, --venv DIR (create it if
# missing and install there; default: the current python3 or $PYTHON), -h/--help.
# Environment: OUT (default gpu-check-<date>/ here), HF_TOKEN (Gemma 2 and Orpheus are gated: needed unless the
# weights are already cached), PYTHON, GPU_CHECK_TIMEOUT_{INSTALL,DOCTOR,SNAC,PIPELINE,LOAD,TALK} (seconds),
# GPU_CHECK_LOAD_PORT (default 7861).
# Stop the voicekit app on the same GPU first: vLLM needs its memory shares free.
# Exit status: 0 all steps passed, 1 a step failed (its log says why), 2 no usable GPU or a bad option.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIRED_CUDA="13.0"  # requirements-gpu.txt: vllm 0.32.0 pins torch 2.13.0, a CUDA 13.0 build
QUICK=0
REPEATS=2
INSTALL=1
VENV=""

die() { echo "error: $*" >&2; exit "${2:-2}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --repeats) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--repeats needs a positive number"; REPEATS="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --venv) [[ -n "${2:-}" ]] || die "--venv needs a folder"; VENV="$2"; shift ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

say "GPU: $GPUS (driver supports CUDA ${DRIVER_CUDA:-unknown}); results in $OUT"
if [[ -z "${HF_TOKEN:-}" && -z "${HUGGING_FACE_HUB_TOKEN:-}" && ! -s "${HF_HOME:-$HOME/.cache/huggingface}/token" ]]; then
    say "warning: HF_TOKEN is not set: google/gemma-2-2b-it and canopylabs/orpheus-3b-0.1-ft are gated, so only weights already in the Hugging Face cache can load (export HF_TOKEN=hf_... after accepting both licences on huggingface.co)"
fi

# ---- the Python environment ------------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if [[ -n "$VENV" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        step "create the venv $VENV" 120 "$OUT/venv.log" "$PYTHON" -m venv "$VENV" || exit 1
    fi
    PYTHON="$(cd "$VENV" && pwd)/bin/python"
fi
command -v "$PYTHON" >/dev/null || die "no Python interpreter $PYTHON (set PYTHON or use --venv DIR)" 1

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

# ---- 4 and 5. the benchmarks -----------------------------------------------------------------------------
step "bench snac on CUDA, 4 concurrent streams" "${GPU_CHECK_TIMEOUT_SNAC:-90}" "$OUT/snac.log" \
    "$PYTHON" -m voicekit bench snac --device cuda --streams 4 --json "$OUT/snac.json"
PIPELINE_ARGS=(--preset gpu --repeats "$REPEATS")
if [[ $QUICK -eq 1 ]]; then PIPELINE_ARGS=(--preset gpu --repeats 1 --quick); fi
step "bench pipeline ${PIPELINE_ARGS[*]} (loads the gpu preset)" "${GPU_CHECK_TIMEOUT_PIPELINE:-420}" \
    "$OUT/pipeline.log" "$PYTHON" -m voicekit bench pipeline "${PIPELINE_ARGS[@]}" --json "$OUT/pipeline.json"

# ---- 6. load: the gpu preset served, many clients at once -----------------------------------------------
LOAD_PORT="${GPU_CHECK_LOAD_PORT:-7861}"
load_step() {  # serve the gpu preset, wait for /health, run bench load against it, stop the server
    "$PYTHON" -m voicekit serve --preset gpu --host 127.0.0.1 --port "$LOAD_PORT" >"$OUT/serve.log" 2>&1 &
    local server=$! status=1
    for _ in $(seq 1 600); do
        if "$PYTHON" "$ROOT/runpod/checks.py" health "http://127.0.0.1:$LOAD_PORT/health" >/dev/null 2>&1; then
            "$PYTHON" -m voicekit bench load --url "http://127.0.0.1:$LOAD_PORT" --clients 16 --requests 4 \
                --json "$OUT/load.json"
            status=$?
            break
        fi
        kill -0 "$server" 2>/dev/null || break
        sleep 0.5
    done
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null
    return "$status"
}
if [[ $QUICK -eq 0 ]]; then
    export -f load_step
    export PYTHON OUT ROOT LOAD_PORT
    step "bench load: 16 clients x 4 requests on the served gpu preset" "${GPU_CHECK_TIMEOUT_LOAD:-300}" \
        "$OUT/load.log" bash -c load_step
fi

if [[ $QUICK -eq 0 ]]; then
    step "bench talk: spoken turns and barge-in over /v1/realtime (gpu preset, Whisper on CUDA)" \
        "${GPU_CHECK_TIMEOUT_TALK:-300}" "$OUT/talk.log" \
        "$PYTHON" -m voicekit bench talk --preset gpu --repeats 2 --json "$OUT/talk.json"
fi

# ---- 7. summary ------------------------------------------------------------------------------------------
"$PYTHON" - "$OUT" <<'SUMMARY' | tee "$OUT/summary.txt"
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"\nsummary ({out})")
snac_file, pipeline_file = out / "snac.json", out / "pipeline.json"
if snac_file.is_file():
    snac = json.loads(snac_file.read_text())
    streams = snac.get("concurrent") or {}
    print(f"SNAC on {snac['device']}: {snac['frames']} frames, stream/one-shot {snac['ratio']}x, "
          f"snr {snac['snr_db']} dB, first audio after {snac['first_audio_frames']} frames; "
          f"{streams.get('streams', 1)} streams: unbatched {streams.get('unbatched_s')} s, "
          f"batched {streams.get('batched_s')} s, batch_gain {streams.get('batch_gain')} (> 1: batching pays)")
talk_file = out / "talk.json"
if talk_file.is_file():
    talk = json.loads(talk_file.read_text())
    print(f"talk: turn end -> first audio {talk['turn_end_to_first_audio_s']} s (median), ASR RTF {talk['asr_rtf']}, "
          f"barge-in stop {talk['barge_in_stop_s']} s, late audio deltas {talk['late_audio_deltas']}")
load_file = out / "load.json"
if load_file.is_file():
    load = json.loads(load_file.read_text())
    print(f"load: {load['clients']} clients x {load['requests_per_client']}: statuses {load['statuses']}, first audio "
          f"p50 {load['first_audio_s']['p50']} s p95 {load['first_audio_s']['p95']} s, memory "
          f"{load['memory_mb']['before']} -> {load['memory_mb']['after']} MB, left running {load['left_running']}")
if pipeline_file.is_file():
    pipeline = json.loads(pipeline_file.read_text())
    described = pipeline.get("description", {})
    print(f"pipeline, preset {pipeline['preset']}: chat {described.get('chat')}, tts {described.get('tts')}, "
          f"{described.get('device')}; {pipeline['repeats']} run(s) per case, {pipeline['seconds']} s")
    print(f"{'case':<12} {'mode':<11} {'words':>5} {'ttfa_s':>8} {'total_s':>8} {'audio_s':>8} {'rtf':>7}")
    for case in pipeline["cases"]:
        print(f"{case['name']:<12} {case['mode']:<11} {case['words']:>5} {case['ttfa_s']!s:>8} "
              f"{case['total_s']!s:>8} {case['audio_s']!s:>8} {case['rtf']!s:>7}")
SUMMARY

if [[ ${#FAILED[@]} -gt 0 ]]; then
    say "failed after ${SECONDS} s: ${FAILED[*]} (logs in $OUT)"
    exit 1
fi
say "all steps passed in ${SECONDS} s; results in $OUT"
