"""`queueflow dev`: embedded servers, migrations, one port, workers; a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import PostgresDsn

from queueflow import dev
from queueflow.core.config import Settings
from queueflow.dev import CombinedApp
from queueflow.embedded import free_port
from queueflow.ingest.app import create_app as create_ingest
from queueflow.reporting.app import create_app as create_reporting
from tests.helpers import event, serve, service_env

URL_VARS = ("REDIS_URL", "DATABASE_URL")


def dev_ports(workers: int = 1) -> int:
    """A free port whose next `workers` ports are free too: dev gives its workers the ports
    after its own, and a worker whose port is taken never consumes."""
    while True:
        port = free_port()
        with contextlib.ExitStack() as held:
            try:
                for p in range(port + 1, port + 1 + workers):
                    held.enter_context(socket.create_server(("127.0.0.1", p)))
            except OSError:
                continue
        return port


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
    deadline = time.monotonic() + 20  # a bound, not a figure: a busy machine is slower
    while total_views(port) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_dev_runs_the_pipeline_keeps_its_data_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", dev_ports()
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

    port = dev_ports()
    proc = start_dev(data_dir, port, {})
    try:
        assert total_views(port) == 1  # the numbers survived the restart
    finally:
        stop(proc, signal.SIGTERM)


def test_dev_uses_the_servers_it_is_given(tmp_path: Path, settings: Settings) -> None:
    data_dir, port = tmp_path / "data", dev_ports()
    env = {**service_env(settings), "QUEUEFLOW_WORKERS": "1"}
    proc = start_dev(data_dir, port, env)
    try:
        send_one_and_see_it(port)
    finally:
        stop(proc)
    assert not data_dir.exists()


@contextlib.asynccontextmanager
async def dev_port(
    settings: Settings, reporting: FastAPI | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The dev port's app (CombinedApp) in-process, on a real loopback port."""
    app = CombinedApp(create_ingest(settings), reporting or create_reporting(settings))
    async with serve(app) as client:
        yield client


async def test_dev_port_readyz_checks_redis_and_postgres(settings: Settings) -> None:
    async with dev_port(settings) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "postgres": "ok"}}
        assert (await client.get("/readyz?verbose=1")).status_code == 422


async def test_dev_port_is_not_ready_without_postgres(settings: Settings) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    settings = settings.model_copy(
        update={"database_url": PostgresDsn(closed), "auto_migrate": False}
    )
    async with dev_port(settings) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["redis"] == "ok" and checks["postgres"].startswith("unavailable")
        stats = await client.get("/stats", params={"site_id": "s"})
        assert stats.status_code == 503  # reporting is reached, and says why


async def test_dev_port_documents_both_apps(settings: Settings) -> None:
    async with dev_port(settings) as client:
        document = (await client.get("/openapi.json")).json()
        assert {"/stats", "/event", "/events", "/healthz", "/readyz", "/metrics"} <= set(
            document["paths"]
        )
        assert {"Event", "DailyStatsResponse"} <= set(document["components"]["schemas"])
        assert (await client.get("/docs")).status_code == 200


async def test_dev_port_routes_by_the_reporting_apps_own_table(settings: Settings) -> None:
    reporting = create_reporting(settings)

    @reporting.get("/stats/later")  # a route dev.py has never heard of
    async def later(site_id: str) -> dict[str, str]:
        return {"site_id": site_id}

    async with dev_port(settings, reporting) as client:
        assert (await client.get("/stats/later?site_id=s")).json() == {"site_id": "s"}
        assert (await client.get("/stats/later?site_id=s&x=1")).status_code == 422
        assert (await client.get("/stats?site_id=s")).status_code == 200
        assert (await client.post("/stats")).status_code == 405  # reporting's answer
        assert (await client.post("/event", json=event(site_id="s"))).status_code == 202
        slash = await client.get("/stats/?site_id=s", headers={"host": "evil.example"})
        assert slash.status_code == 404 and "location" not in slash.headers


class Recorder:
    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, Any]]] = []

    def error(self, message: str, **fields: Any) -> None:
        self.errors.append((message, fields))


async def test_a_failed_start_is_reported_with_its_traceback(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("reporting cannot start")
        yield

    log = Recorder()
    monkeypatch.setattr(dev, "log", log)
    app = CombinedApp(create_ingest(settings), FastAPI(title="broken", lifespan=broken))
    incoming: asyncio.Queue[dict] = asyncio.Queue()
    await incoming.put({"type": "lifespan.startup"})
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app({"type": "lifespan", "state": {}}, incoming.get, send), 10)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "reporting cannot start" in sent[0]["message"]
    [(_, fields)] = log.errors
    assert fields["app"] == "broken"
    assert isinstance(fields["exc_info"], RuntimeError) and fields["exc_info"].__traceback__
