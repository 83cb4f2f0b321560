#!/usr/bin/env bash
# Install everything the tests need, then run them: the README's test command, and what CI runs.
#   - Python packages of the kit and the test tools (requirements-dev.txt)
#   - Debian's chromium for the browser test (tests/install_browser.sh; needs root, else that test skips)
#   - the vLLM CPU build in its own venv, .venv-vllm (scripts/vllm_env.sh; it conflicts with the main env)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
sh tests/install_browser.sh
# shellcheck lints runpod/start.sh in tests/test_runpod.py (Debian package; root only, else that test skips)
command -v shellcheck >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq shellcheck >/dev/null; } || true
bash scripts/vllm_env.sh
python -m ruff check .
python -m pytest "$@"
