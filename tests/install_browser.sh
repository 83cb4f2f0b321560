#!/bin/sh
# Install Debian's chromium for tests/test_web.py's browser test (Playwright drives it through
# executable_path=/usr/bin/chromium; Playwright's own browser download is not used).
# Idempotent: does nothing when chromium is already there. Installs only when run as root.
set -eu
if [ -x /usr/bin/chromium ]; then
    echo "install_browser: /usr/bin/chromium is already installed"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install_browser: not root; skipping (the browser test will be skipped)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get here; skipping (the browser test will be skipped)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "install_browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
