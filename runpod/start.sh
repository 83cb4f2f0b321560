#!/usr/bin/env bash
# voicekit pod start command (RunPod template "start command"; also the image's CMD).
#
#   bash runpod/start.sh            # serve until SIGTERM, restarting a crashed service with backoff
#   bash runpod/start.sh --once     # no restarts: the first service to exit stops everything
#
# Steps: copy the notebooks onto the volume; install the kit once (a marker holds the requirements' hash);
# `python -m voicekit doctor`; gpu mode: check that torch can use the GPU and vLLM imports (if not: the cpu
# preset, with the reason on the page), check HF_TOKEN and access to the (gated) models, download them with progress;
# then serve the page + API (app.py, port 7860) and JupyterLab (port 8888), both behind one password, and
# restart the app when its /health answers an error. Safe to run again on a pod restart: reuses the password,
# skips the install, stops stale processes.
#
# Environment (all optional):
#   WORKSPACE            the volume (default /workspace): hf/ (HF_HOME), logs/, run/ (pid files), .voicekit-password
#   VOICEKIT_POD_MODE    gpu, cpu or auto (default: gpu when nvidia-smi lists a GPU)
#   VOICEKIT_PRESET      app.py --preset (default: the mode)
#   VOICEKIT_PASSWORD    password (or user:password) for the page, the API and JupyterLab; when unset one is
#                        generated once into $WORKSPACE/.voicekit-password and printed once to this log
#   HF_TOKEN             Hugging Face token (required in gpu mode: Gemma 2 and Orpheus are gated)
#   VOICEKIT_HOST        interface (default 0.0.0.0); VOICEKIT_PORT (7860); JUPYTER_PORT (8888)
#   VOICEKIT_JUPYTER     0 to skip JupyterLab
#   VOICEKIT_SKIP_INSTALL=1, VOICEKIT_SKIP_DOCTOR=1, VOICEKIT_SKIP_DOWNLOAD=1   skip a step
#   VOICEKIT_INSTALL_MARKER   marker file of the install step (default: in the Python environment)
#   VOICEKIT_HEALTH_INTERVAL  seconds between /health checks of the app (default 15; 0: no checks)
#   VLLM_CACHE_ROOT, FLASHINFER_WORKSPACE_BASE, TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR: compiled-kernel caches
#                        (default: under $WORKSPACE/cache, so a restarted pod does not compile again)
#   PYTHON               the interpreter (default python3, else python)

set -uo pipefail

ONCE=0
for arg in "$@"; do
    case "$arg" in
        --once) ONCE=1 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "start.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done
if [[ "${VOICEKIT_POD_ONCE:-0}" == "1" ]]; then ONCE=1; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKSPACE="${WORKSPACE:-/workspace}"
export WORKSPACE
export HF_HOME="${HF_HOME:-$WORKSPACE/hf}"
export HF_HUB_ENABLE_HF_TRANSFER="${HF_HUB_ENABLE_HF_TRANSFER:-0}"
# vLLM, FlashInfer (appends .cache/flashinfer), Triton and torch inductor compile kernels on first use: on the volume
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$WORKSPACE/cache/vllm}"
export FLASHINFER_WORKSPACE_BASE="${FLASHINFER_WORKSPACE_BASE:-$WORKSPACE/cache/flashinfer}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$WORKSPACE/cache/triton}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$WORKSPACE/cache/torchinductor}"
# RunPod's proxy cuts a request at 100 s: the app stops one before that, cleanly (docs/API.md, "Limits")
export VOICEKIT_REQUEST_TIMEOUT_S="${VOICEKIT_REQUEST_TIMEOUT_S:-95}"
unset VOICEKIT_FALLBACK_REASON  # set below when the gpu preset cannot run here; app.py shows it on the page
LOG_DIR="$WORKSPACE/logs"
RUN_DIR="$WORKSPACE/run"
PASSWORD_FILE="$WORKSPACE/.voicekit-password"
HOST="${VOICEKIT_HOST:-0.0.0.0}"
PORT="${VOICEKIT_PORT:-7860}"
JPORT="${JUPYTER_PORT:-8888}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
HEALTH_INTERVAL="${VOICEKIT_HEALTH_INTERVAL:-15}"

say() { printf '[voicekit %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

mkdir -p "$LOG_DIR" "$RUN_DIR" "$HF_HOME" || die "cannot create $LOG_DIR, $RUN_DIR or $HF_HOME"
[[ -n "$PYTHON" ]] || die "no python3 or python on PATH"
[[ "$HEALTH_INTERVAL" =~ ^[0-9]+$ ]] || die "VOICEKIT_HEALTH_INTERVAL must be a whole number of seconds"

# ---- stale processes from an earlier run (pid files; the command line must still match) ----------------
stop_pid() {  # stop_pid PID  (TERM, then KILL after 15 s)
    local pid="$1" i state
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        state="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 0
        state="${state##*) }"
        [[ "${state:0:1}" == "Z" ]] && return 0  # exited, waiting for its parent to reap it
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_stale() {
    local file pid pattern cmdline
    for file in "$RUN_DIR"/*.pid; do
        [[ -f "$file" ]] || continue
        pid="$(cat "$file" 2>/dev/null || true)"
        case "$(basename "$file")" in
            start.pid) pattern="start.sh" ;;
            app.pid) pattern="app.py" ;;
            jupyter.pid) pattern="jupyter" ;;
            *) pattern="start.sh" ;;
        esac
        if [[ "$pid" =~ ^[0-9]+$ && "$pid" != "$$" && -r "/proc/$pid/cmdline" ]]; then
            cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
            if [[ "$cmdline" == *"$pattern"* ]]; then
                say "stopping a stale $(basename "$file" .pid) process (pid $pid)"
                stop_pid "$pid"
            fi
        fi
        rm -f "$file"
    done
}
stop_stale
echo "$$" >"$RUN_DIR/start.pid"

# ---- mode -----------------------------------------------------------------------------------------------
MODE="${VOICEKIT_POD_MODE:-auto}"
if [[ "$MODE" == "auto" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        MODE=gpu
    else
        MODE=cpu
    fi
fi
[[ "$MODE" == "gpu" || "$MODE" == "cpu" ]] || die "VOICEKIT_POD_MODE must be gpu, cpu or auto (got '$MODE')"
PRESET="${VOICEKIT_PRESET:-$MODE}"
if [[ "$MODE" == "cpu" && "$PRESET" == "gpu" ]]; then
    say "VOICEKIT_PRESET=gpu but no GPU here (cpu mode): using the cpu preset"
    PRESET=cpu
fi
say "mode $MODE, preset $PRESET, workspace $WORKSPACE, repo $ROOT"

fall_back_to_cpu() {  # fall_back_to_cpu REASON: the gpu preset cannot run here; serve the cpu preset instead
    VOICEKIT_FALLBACK_REASON="gpu preset unavailable: $1; running the cpu preset"
    export VOICEKIT_FALLBACK_REASON
    MODE=cpu
    PRESET=cpu
    say "$VOICEKIT_FALLBACK_REASON"
}

# ---- notebooks: JupyterLab's root is the volume; copy the repo's notebooks there, never over a user's edits ---
copy_notebooks() {
    local src="$ROOT/notebooks" dest="$WORKSPACE/notebooks" file rel copied=0
    [[ -d "$src" ]] || return 0
    while IFS= read -r -d '' file; do
        rel="${file#"$src"/}"
        [[ -e "$dest/$rel" ]] && continue
        mkdir -p "$(dirname "$dest/$rel")" && cp -p "$file" "$dest/$rel" && copied=$((copied + 1))
    done < <(find "$src" -type f ! -path '*/.ipynb_checkpoints/*' -print0)
    say "notebooks: $copied new file(s) copied to $dest (files already there are kept as they are)"
}
copy_notebooks

# ---- install (once per requirements file content) -------------------------------------------------------
if [[ "$MODE" == "gpu" ]]; then REQS="$ROOT/requirements-gpu.txt"; else REQS="$ROOT/requirements.txt"; fi
if [[ "${VOICEKIT_SKIP_INSTALL:-0}" != "1" ]]; then
    # The marker lives in the Python environment it describes: the image's /opt/venv (runpod/Dockerfile), or
    # the venv bootstrap.sh keeps on the volume, so a fresh container with another environment installs again.
    MARKER="${VOICEKIT_INSTALL_MARKER:-$("$PYTHON" -c 'import sys; print(sys.prefix)')/.voicekit-installed}"
    WANT="$(cat "$REQS" "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]]; then
        say "install: already done ($MARKER)"
    else
        say "install: pip install -r $(basename "$REQS") (log: $LOG_DIR/install.log)"
        if (cd "$ROOT" && "$PYTHON" -m pip install --no-input -r "$REQS") >>"$LOG_DIR/install.log" 2>&1; then
            echo "$WANT" >"$MARKER" || say "could not write the install marker $MARKER"
        elif [[ "$MODE" == "gpu" ]]; then
            fall_back_to_cpu "pip install -r requirements-gpu.txt failed (see $LOG_DIR/install.log)"
            (cd "$ROOT" && "$PYTHON" -m pip install --no-input -r requirements.txt) >>"$LOG_DIR/install.log" 2>&1 \
                || die "pip install -r requirements.txt failed too; see $LOG_DIR/install.log"
        else
            die "pip install -r $REQS failed; see $LOG_DIR/install.log"
        fi
    fi
fi

# ---- diagnosis (after the install: a fresh venv has nothing to report on) ------------------------------
if [[ "${VOICEKIT_SKIP_DOCTOR:-0}" != "1" ]]; then
    say "python -m voicekit doctor"
    (cd "$ROOT" && "$PYTHON" -m voicekit doctor) || say "doctor failed (continuing)"
fi

# ---- gpu mode: can torch use this GPU, and does vLLM import? If not: the cpu preset, saying why ----------
if [[ "$MODE" == "gpu" ]]; then
    say "checking that torch can use the GPU and vLLM imports"
    # the verdict is the last line (importing vLLM may log to stdout first); pipefail keeps checks.py's status
    if GPU_CHECK="$("$PYTHON" "$ROOT/runpod/checks.py" gpu 2>>"$LOG_DIR/checks.log" | tail -n 1)"; then
        say "$GPU_CHECK"
        # FlashInfer JIT-compiles its sampler with the nvcc it finds; one built for another CUDA than torch's
        # fails at the first request. Then vLLM's own sampler is used instead.
        if TOOLKIT="$("$PYTHON" "$ROOT/runpod/checks.py" toolkit 2>>"$LOG_DIR/checks.log" | tail -n 1)"; then
            say "CUDA toolkit: $TOOLKIT"
        elif [[ -z "${VLLM_USE_FLASHINFER_SAMPLER:-}" ]]; then
            export VLLM_USE_FLASHINFER_SAMPLER=0
            say "CUDA toolkit: $TOOLKIT: VLLM_USE_FLASHINFER_SAMPLER=0 (vLLM's own sampler, no JIT build)"
        fi
    else
        fall_back_to_cpu "${GPU_CHECK:-the GPU check failed (see $LOG_DIR/checks.log)}"
    fi
fi

# ---- models (gpu mode: gated, downloaded before serving) ------------------------------------------------
if [[ "$MODE" == "gpu" ]]; then
    [[ -n "${HF_TOKEN:-}" ]] || die "HF_TOKEN is not set. The gpu preset downloads gated models \
(google/gemma-2-2b-it, canopylabs/orpheus-3b-0.1-ft): accept their licences on huggingface.co, create a read \
token at https://huggingface.co/settings/tokens and set HF_TOKEN in the pod's environment (template variable)."
    export HF_TOKEN
    if [[ "${VOICEKIT_SKIP_DOWNLOAD:-0}" != "1" ]]; then
        say "checking access to the models, then downloading them into $HF_HOME"
        "$PYTHON" "$ROOT/runpod/models.py" check || die "a model is not accessible (see above)"
        "$PYTHON" "$ROOT/runpod/models.py" download || die "model download failed (see above)"
    fi
fi

# ---- password (env, else generated once and kept on the volume) -----------------------------------------
if [[ -n "${VOICEKIT_PASSWORD:-}" ]]; then
    say "password: from VOICEKIT_PASSWORD"
elif [[ -s "$PASSWORD_FILE" ]]; then
    VOICEKIT_PASSWORD="$(cat "$PASSWORD_FILE")"
    say "password: reusing the one saved in $PASSWORD_FILE (cat it to see it)"
else
    VOICEKIT_PASSWORD="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(16))')"
    (umask 077 && printf '%s\n' "$VOICEKIT_PASSWORD" >"$PASSWORD_FILE") || die "cannot write $PASSWORD_FILE"
    # The one time the password is shown: this pod log. It is saved in $PASSWORD_FILE for later.
    say "password (generated, shown once, saved in $PASSWORD_FILE): $VOICEKIT_PASSWORD"
fi
export VOICEKIT_PASSWORD
SECRET="${VOICEKIT_PASSWORD#*:}"  # user:password -> password (JupyterLab takes a token only)

# ---- services -------------------------------------------------------------------------------------------
run_app() {  # the app with the current preset (a gpu fall-back in supervise changes it for later restarts)
    exec "$PYTHON" "$ROOT/app.py" --host "$HOST" --port "$PORT" --preset "$PRESET"
}

supervise() {  # supervise NAME COMMAND...  (runs in a background subshell)
    local name="$1" child="" rc started delay=1 failures=0
    shift
    trap '[[ -n "$child" ]] && stop_pid "$child"; wait "$child" 2>/dev/null; rm -f "$RUN_DIR/$name.pid"; exit 0' TERM INT
    while true; do
        started=$SECONDS
        echo "=== $(date -u '+%F %T') start: $name" >>"$LOG_DIR/$name.log"
        "$@" >>"$LOG_DIR/$name.log" 2>&1 &
        child=$!
        echo "$child" >"$RUN_DIR/$name.pid"
        wait "$child"
        rc=$?
        child=""
        rm -f "$RUN_DIR/$name.pid"
        if [[ "$ONCE" == "1" ]]; then
            say "$name exited with status $rc (--once: not restarting)"
            exit "$rc"
        fi
        if ((SECONDS - started > 60)); then delay=1; fi
        # The gpu preset failing again and again (each run under 30 min) will not heal by itself: cpu preset.
        if [[ "$name" == "app" && "$PRESET" == "gpu" ]]; then
            if ((rc != 0 && SECONDS - started < 1800)); then failures=$((failures + 1)); else failures=0; fi
            if ((failures >= 3)); then
                fall_back_to_cpu "the gpu preset exited $failures times in a row (last status $rc; \
see $LOG_DIR/app.log)"
                delay=1
            fi
        fi
        say "$name exited with status $rc; restarting in ${delay}s (log: $LOG_DIR/$name.log)"
        sleep "$delay" &
        child=$!
        wait "$child"
        child=""
        delay=$((delay * 2 > 60 ? 60 : delay * 2))
    done
}

watch_health() {  # restart the app (stop it; its supervise loop starts it again) when /health answers an error
    local host="$HOST" nap="" line status pid
    [[ "$host" == "0.0.0.0" || "$host" == "::" || -z "$host" ]] && host=127.0.0.1
    [[ "$host" == *:* ]] && host="[$host]"
    trap '[[ -n "$nap" ]] && kill "$nap" 2>/dev/null; exit 0' TERM INT
    while true; do
        sleep "$HEALTH_INTERVAL" &
        nap=$!
        wait "$nap"
        nap=""
        # 0: healthy; 1: it answered an error (a dead engine: 503 + reason); 2: no answer yet (loading, restarting)
        line="$("$PYTHON" "$ROOT/runpod/checks.py" health "http://$host:$PORT/health" 2>&1)"
        status=$?
        if ((status == 1)); then
            pid="$(cat "$RUN_DIR/app.pid" 2>/dev/null || true)"
            say "app unhealthy: $line; restarting it (log: $LOG_DIR/app.log)"
            [[ "$pid" =~ ^[0-9]+$ ]] && stop_pid "$pid"
        fi
    done
}

SUPERVISORS=()
shutdown() {
    local rc="${1:-0}" pid
    trap - TERM INT
    say "stopping services"
    for pid in "${SUPERVISORS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${SUPERVISORS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$RUN_DIR/start.pid"
    say "stopped"
    exit "$rc"
}
trap 'shutdown 0' TERM INT

cd "$ROOT" || die "cannot cd to $ROOT"
supervise app run_app &
SUPERVISORS+=("$!")
if ((HEALTH_INTERVAL > 0)); then
    watch_health &
    SUPERVISORS+=("$!")
fi
if [[ "${VOICEKIT_JUPYTER:-1}" != "0" ]]; then
    export JUPYTER_RUNTIME_DIR="$RUN_DIR/jupyter-runtime"
    (
        export JUPYTER_TOKEN="$SECRET"  # in the environment, not on the command line (ps) or in the log
        # the notebooks' kernels import voicekit from this checkout (the notebooks sit in $WORKSPACE/notebooks)
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
        # ... and talk to the app through voicekit.connect() (VOICEKIT_PASSWORD is their key): the app holds
        # the GPU, and a second copy of the models would not fit beside it
        export VOICEKIT_URL="http://127.0.0.1:$PORT"
        supervise jupyter "$PYTHON" -m jupyter lab --ip "$HOST" --port "$JPORT" --no-browser --allow-root \
            --ServerApp.root_dir="$WORKSPACE" --ServerApp.allow_origin='*' --ServerApp.port_retries=0
    ) &
    SUPERVISORS+=("$!")
fi

if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
    say "page + API: https://${RUNPOD_POD_ID}-${PORT}.proxy.runpod.net   JupyterLab: https://${RUNPOD_POD_ID}-${JPORT}.proxy.runpod.net"
else
    say "page + API: http://$HOST:$PORT   JupyterLab: http://$HOST:$JPORT"
fi
say "log in with any user name and the password; logs in $LOG_DIR (the models take a while to load)"

while true; do
    wait -n
    rc=$?
    if ((rc == 127)); then shutdown 1; fi  # no supervisor left
    if [[ "$ONCE" == "1" ]]; then shutdown "$rc"; fi
done
