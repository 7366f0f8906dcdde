#!/usr/bin/env bash
# promtool for the alert rule tests (tests/unit/test_monitoring.py runs `promtool check rules`
# and the unit tests in tests/monitoring/): when it is missing, install the Debian package that
# ships it (`prometheus`, /usr/bin/promtool). Never fails CI: without promtool those tests skip
# and say why.
set -u

say() { echo "promtool.sh: $*" >&2; }

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "promtool missing and no apt-get to install it: the promtool tests will skip"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  say "promtool missing and not root (nor passwordless sudo): the promtool tests will skip"
  exit 0
fi

# The package also holds the Prometheus server and its service unit: keep the service from
# starting (invoke-rc.d and deb-systemd-invoke ask policy-rc.d; 101 = action forbidden).
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ] &&
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null &&
  $SUDO chmod 755 "$POLICY"; then
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq; then
  say "apt-get update failed: trying the package lists already here"
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
  prometheus >/dev/null; then
  say "apt-get install prometheus failed: the promtool tests will skip"
  exit 0
fi
if command -v promtool >/dev/null 2>&1; then
  say "installed $(promtool --version 2>&1 | head -n 1)"
else
  say "the prometheus package brought no promtool: the promtool tests will skip"
fi
exit 0
