#!/usr/bin/env bash
# Debian's redis-server and redis-cli for the Redis Cluster tests (tests/redis_cluster.py: six
# nodes joined by `redis-cli --cluster create`): installed with apt when missing. It never
# fails: without them those tests skip and say why.
set -uo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "redis-server: missing and cannot install it (needs root and apt-get)" >&2
    exit 0
fi
echo "redis-server: installing Debian's redis-server and redis-tools" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=120 redis-server redis-tools; } >"$log" 2>&1; then
    echo "redis-server: apt-get failed:" >&2
    tail -20 "$log" >&2
fi
rm -f "$log"
# The package's own server is not wanted: the tests start their nodes themselves.
if command -v systemctl >/dev/null; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
exit 0
