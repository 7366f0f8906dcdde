"""`queueflow dev`: embedded servers, migrations, one port, workers; a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from queueflow.core.config import Settings
from queueflow.embedded import free_port
from tests.helpers import event, service_env

URL_VARS = ("REDIS_URL", "DATABASE_URL")


def start_dev(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "queueflow",
            "dev",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env={**base, "QUEUEFLOW_LOG_LEVEL": "warning", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("queueflow dev did not become ready")


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def total_views(port: int) -> int:
    today = datetime.now(UTC).date().isoformat()
    r = httpx.get(f"http://127.0.0.1:{port}/stats", params={"site_id": "dev", "date": today})
    return r.json()["total_views"]


def send_one_and_see_it(port: int) -> None:
    response = httpx.post(f"http://127.0.0.1:{port}/event", json=event(site_id="dev"))
    assert response.status_code == 202
    deadline = time.monotonic() + 5
    while total_views(port) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_dev_runs_the_pipeline_keeps_its_data_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    proc = start_dev(data_dir, port, {"QUEUEFLOW_WORKERS": "2"})
    try:
        send_one_and_see_it(port)
        out = stop(proc)  # Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"http://127.0.0.1:{port}" in out and f":{port + 2}/metrics" in out
    time.sleep(0.5)
    assert processes_mentioning(str(data_dir)) == []  # no orphaned server or worker

    port = free_port()
    proc = start_dev(data_dir, port, {})
    try:
        assert total_views(port) == 1  # the numbers survived the restart
    finally:
        stop(proc, signal.SIGTERM)


def test_dev_uses_the_servers_it_is_given(tmp_path: Path, settings: Settings) -> None:
    data_dir, port = tmp_path / "data", free_port()
    env = {**service_env(settings), "QUEUEFLOW_WORKERS": "1"}
    proc = start_dev(data_dir, port, env)
    try:
        send_one_and_see_it(port)
    finally:
        stop(proc)
    assert not data_dir.exists()
