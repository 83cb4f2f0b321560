#!/usr/bin/env bash
# Install everything the tests need, then run them. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -r requirements-dev.txt
python -m ruff check .
python -m pytest "$@"
