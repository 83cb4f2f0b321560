#!/bin/sh
# The Kokoro v1.0 voices for the tests, offline from the hub: the npm package kokoro-js@1.2.1 ships the very same
# files as the hub's onnx-community/Kokoro-82M-v1.0-ONNX `voices/` (54 float32 (510, 1, 256) style vectors).
# `npm pack` fetches the tarball from the npm registry; its voices/ folder is unpacked into
#   ${VOICEKIT_TEST_KOKORO_VOICES:-$HOME/.cache/voicekit-tests/kokoro-voices}
# which tests/conftest.py passes to the tests as VOICEKIT_KOKORO_VOICES. Idempotent; without npm (or the
# registry) it says so and the Kokoro tests skip with that reason.
set -eu
DEST="${VOICEKIT_TEST_KOKORO_VOICES:-$HOME/.cache/voicekit-tests/kokoro-voices}"
if [ -s "$DEST/af_heart.bin" ] && [ "$(ls "$DEST"/*.bin | wc -l)" -ge 54 ]; then
    echo "fetch_kokoro_voices: $DEST is ready"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_kokoro_voices: npm is not installed; the Kokoro tests will be skipped" >&2
    exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if ! (cd "$WORK" && npm pack kokoro-js@1.2.1 --silent >/dev/null 2>&1); then
    echo "fetch_kokoro_voices: npm pack kokoro-js@1.2.1 failed; the Kokoro tests will be skipped" >&2
    exit 0
fi
tar -xzf "$WORK"/kokoro-js-1.2.1.tgz -C "$WORK" package/voices
mkdir -p "$DEST"
cp "$WORK"/package/voices/*.bin "$DEST"/
echo "fetch_kokoro_voices: $(ls "$DEST"/*.bin | wc -l) voices in $DEST"
