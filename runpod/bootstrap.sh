#!/usr/bin/env bash
# voicekit on a stock image (no voicekit image needed): the second half of template.json's start command.
#
# The start command clones the repository onto the volume once ($WORKSPACE/voicekit) and runs this script from
# the clone. Here: update the clone (fast-forward only, never over local edits), make sure git and python3 exist,
# keep a virtual environment on the volume ($WORKSPACE/venv, made once), then run runpod/start.sh with it.
# start.sh installs the requirements into that venv once (a marker holds their hash), so a pod restart, or a new
# pod on the same volume, neither clones nor installs again.
#
#   bash runpod/bootstrap.sh              # prepare, then exec runpod/start.sh (its options pass through)
#   bash runpod/bootstrap.sh --no-start   # prepare only
#
# Environment: WORKSPACE (default /workspace); VOICEKIT_GIT_UPDATE=0 keeps the clone as it is;
# VOICEKIT_VENV (default $WORKSPACE/venv); VOICEKIT_BASE_PYTHON (default python3) makes the venv.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKSPACE="${WORKSPACE:-/workspace}"
VENV="${VOICEKIT_VENV:-$WORKSPACE/venv}"
BASE_PYTHON="${VOICEKIT_BASE_PYTHON:-python3}"
START=1
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --no-start) START=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) ARGS+=("$arg") ;;
    esac
done

say() { printf '[voicekit %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

apt_install() {  # apt_install PACKAGE...  (stock CUDA images may lack git or python3; the pod runs as root)
    command -v apt-get >/dev/null 2>&1 || die "$* missing and no apt-get to install it: use an image that has it"
    say "installing $* (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } \
        >/dev/null || die "apt-get install $* failed"
}

command -v git >/dev/null 2>&1 || apt_install git ca-certificates
command -v "$BASE_PYTHON" >/dev/null 2>&1 || apt_install python3 python3-venv python3-dev

if [[ "${VOICEKIT_GIT_UPDATE:-1}" != "0" && -d "$ROOT/.git" ]]; then
    if git -C "$ROOT" pull --ff-only --quiet 2>&1; then
        say "repo: up to date ($(git -C "$ROOT" log -1 --format='%h %s'))"
    else
        say "repo: could not fast-forward $ROOT (local changes, a tag, or no network): using it as it is"
    fi
fi

if "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    say "venv: reusing $VENV"
else
    say "venv: creating $VENV with $BASE_PYTHON"
    "$BASE_PYTHON" -m venv "$VENV" 2>&1 || {
        apt_install python3-venv
        "$BASE_PYTHON" -m venv --clear "$VENV" || die "cannot create a virtual environment in $VENV"
    }
fi
export PYTHON="$VENV/bin/python"

if ((START == 0)); then
    say "ready: PYTHON=$PYTHON bash $ROOT/runpod/start.sh"
    exit 0
fi
exec bash "$ROOT/runpod/start.sh" "${ARGS[@]}"
