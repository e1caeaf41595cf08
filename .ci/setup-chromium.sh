#!/usr/bin/env bash
# A headless browser for tests/test_report.py: installs Debian's chromium where none is on PATH.
# Idempotent: does nothing when chromium (or chromium-browser / google-chrome) is already there.
set -euo pipefail

for browser in chromium chromium-browser google-chrome; do
    if command -v "$browser" >/dev/null 2>&1; then
        echo "setup-chromium: $browser already installed ($(command -v "$browser"))"
        exit 0
    fi
done

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-chromium: no chromium on PATH and not root; install it with apt-get" >&2
    echo "setup-chromium: (tests/test_report.py skips its browser test without one)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "setup-chromium: installed $(chromium --version 2>/dev/null || echo chromium)"
