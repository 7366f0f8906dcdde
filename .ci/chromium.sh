#!/usr/bin/env bash
# Debian's Chromium for the browser test (tests/browser): installed with apt when missing.
# It never fails: without a browser the test skips and says why. Playwright never downloads
# a browser of its own here; the test drives /usr/bin/chromium.
set -uo pipefail
if command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "chromium: missing and cannot install it (needs root and apt-get)" >&2
    exit 0
fi
echo "chromium: installing Debian's package" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=120 chromium fonts-dejavu-core; } >"$log" 2>&1; then
    echo "chromium: apt-get failed:" >&2
    tail -20 "$log" >&2
fi
rm -f "$log"
exit 0
