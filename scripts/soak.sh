#!/usr/bin/env bash
# A bounded soak on loopback: serve the cpu preset, keep `bench load` rounds on it for MINUTES (default 10),
# and fail unless nothing was left running after every round and the server's memory settled: the highest
# figure of the second half of the rounds within 200 MB of the first half's. Stops by itself; not part of the
# default test run.
#
#   bash scripts/soak.sh                 # 10 minutes, results in soak.json
#   MINUTES=2 OUT=/tmp/soak.json bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-10}"
OUT="${OUT:-soak.json}"
PORT="${PORT:-7862}"
PYTHON="${PYTHON:-python3}"
[[ -x .venv-test/bin/python ]] && PYTHON=.venv-test/bin/python
"$PYTHON" -m voicekit serve --preset cpu --host 127.0.0.1 --port "$PORT" >soak-server.log 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    "$PYTHON" runpod/checks.py health "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { echo "error: the server did not start (soak-server.log)" >&2; exit 1; }
    sleep 0.5
done
"$PYTHON" -m voicekit bench soak --url "http://127.0.0.1:$PORT" --minutes "$MINUTES" --json "$OUT"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
memory = report["memory_mb"]
print(f"soak: {len(report['rounds'])} rounds in {report['minutes']} min; memory {memory['first']} -> {memory['last']} MB "
      f"(max {memory['max']}, growth {memory['growth']} MB, bound {memory['bound']}); ok: {report['ok']}")
sys.exit(0 if report["ok"] else 1)
PY
