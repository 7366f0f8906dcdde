#!/usr/bin/env bash
# A Docker engine for the image test (tests/image), on a machine that may have none.
#   .ci/docker-engine.sh start   install docker.io and debootstrap with apt when missing,
#                                start dockerd in the background unless `docker info` answers,
#                                wait for it
#   .ci/docker-engine.sh stop    stop the dockerd that `start` started (none other)
# It never fails: where no engine can run, the image test skips and says why.
#
# The engine gets no bridge and leaves iptables and IP forwarding alone: every build and
# container here uses the host's network (`--network host`), so nothing but loopback is used.
set -uo pipefail

STATE=${QUEUEFLOW_DOCKERD_STATE:-/var/tmp/queueflow-dockerd}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log

say() { echo "docker-engine: $*" >&2; }
answers() { timeout 20 docker info >/dev/null 2>&1; }

install_missing() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    [ ${#need[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "missing ${need[*]} and cannot install them (needs root and apt-get)"
        return 0
    fi
    say "installing ${need[*]} with apt-get"
    # docker.io's own service must not start (with a bridge and iptables rules): installing
    # asks policy-rc.d, and 101 forbids it; this script starts dockerd its own way below.
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [ ! -e "$policy" ] && printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"; then
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 "${need[@]}"; } \
        >"$STATE/apt.log" 2>&1; then
        say "apt-get failed:"
        tail -20 "$STATE/apt.log" >&2
    fi
    [ -n "$made_policy" ] && rm -f "$policy"
    return 0
}

start() {
    mkdir -p "$STATE"
    install_missing
    if answers; then
        # Not ours (another run's, or the machine's): `stop` must leave it running.
        rm -f "$PIDFILE"
        say "an engine already answers"
        return 0
    fi
    if ! command -v dockerd >/dev/null; then
        say "no dockerd: the image test will skip"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "not root, cannot start dockerd: the image test will skip"
        return 0
    fi
    say "starting dockerd (log: $LOG)"
    setsid dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        </dev/null >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    local waited=0
    while [ $waited -lt 60 ]; do
        if answers; then
            say "engine up after ${waited} s ($(docker version --format '{{.Server.Version}}'))"
            return 0
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "dockerd did not answer; the image test will skip. Its log ends:"
    tail -20 "$LOG" >&2
    stop
    return 0
}

stop() {
    [ -f "$PIDFILE" ] || return 0
    local pid
    pid=$(cat "$PIDFILE")
    rm -f "$PIDFILE"
    # Only our own dockerd: the pid must still be a dockerd.
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 0
    say "stopping dockerd ($pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    say "dockerd ($pid) still running after 30 s; left alone"
    return 0
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) say "usage: $0 start|stop" ;;
esac
exit 0
