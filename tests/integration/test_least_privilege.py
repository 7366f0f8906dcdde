"""QueueFlow with least-privilege PostgreSQL roles, as README "Least-privilege database roles"
creates them (db/least-privilege-roles.sql), and run the way the chart runs it: the migration
Job's role owns the schema, workers and reporting do not migrate (QUEUEFLOW_AUTO_MIGRATE=false)
and hold only their own grants, ingest holds no database URL at all. A worker whose role loses a
grant goes unready, says which permission once, and drains when it is given back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.conftest import scratch_database
from tests.helpers import Service, expected_stats, send, wait_until_exact, workload

ROLES_SQL = Path(__file__).resolve().parents[2] / "db" / "least-privilege-roles.sql"


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:pw-{role}@{host}"))


@pytest.fixture
async def roles(servers: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    """An empty database and the file's three roles (named for this test: roles are
    server-wide); their URLs, and the administrator's as "admin"."""
    prefix = f"qf{uuid.uuid4().hex[:8]}"
    names = {r: f"{prefix}_{r}" for r in ("owner", "worker", "reporting")}
    script = ROLES_SQL.read_text()
    for role, name in names.items():
        script = script.replace(f"queueflow_{role}", name)
    try:
        async with scratch_database(servers["postgres"]) as admin:
            conn = await asyncpg.connect(admin)
            try:
                await conn.execute(script)
                for name in names.values():
                    await conn.execute(f"ALTER ROLE {name} PASSWORD 'pw-{name}'")
            finally:
                await conn.close()
            yield {"admin": admin, **{r: as_role(admin, n) for r, n in names.items()}}
    finally:  # the database, and with it every grant, is gone: the roles can go
        conn = await asyncpg.connect(servers["postgres"])
        try:
            for name in names.values():
                await conn.execute(f"DROP ROLE IF EXISTS {name}")
        finally:
            await conn.close()


def sql(url: str, statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def test_each_service_with_only_its_own_grants(
    roles: dict[str, str],
    servers: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)  # ingest must not need one
    monkeypatch.delenv("REDIS_URL", raising=False)
    tag = uuid.uuid4().hex[:8]
    common = {
        "QUEUEFLOW_STREAM": f"lp_{tag}",
        "QUEUEFLOW_GROUP": f"lp_g_{tag}",
        "QUEUEFLOW_DEAD_LETTER_STREAM": f"lp_dead_{tag}",
        "QUEUEFLOW_BLOCK_MS": "100",
        "QUEUEFLOW_AUTO_MIGRATE": "false",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "queueflow", "migrate"],
        env={**os.environ, "DATABASE_URL": roles["owner"]},
        capture_output=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr

    services: list[Service] = []
    try:
        ingest = Service("ingest", {**common, "REDIS_URL": servers["redis"]})
        worker = Service(
            "worker",
            {**common, "REDIS_URL": servers["redis"], "DATABASE_URL": roles["worker"]},
            log_file=tmp_path / "worker.log",
        )
        reporting = Service("reporting", {**common, "DATABASE_URL": roles["reporting"]})
        services += [ingest, worker, reporting]
        for service in services:
            service.wait_healthy()

        events = workload(300)
        send(ingest.url, events)
        wait_until_exact(roles["admin"], events)
        (site, day), expected = next(iter(expected_stats(events).items()))
        stats = httpx.get(
            f"{reporting.url}/stats", params={"site_id": site, "date": day.isoformat()}
        ).json()
        assert stats["total_views"] == expected["total_views"]
        assert stats["unique_users"] == expected["unique_users"]
        for service in services:
            assert httpx.get(f"{service.url}/readyz").status_code == 200

        # The services' roles cannot change the schema: only the owner migrates. The workers
        # add and expire days through the owner's functions; reporting may not.
        for role in ("worker", "reporting"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                sql(roles[role], "CREATE TABLE sneaky (id int)")
        sql(roles["worker"], "SELECT queueflow_add_event_day(current_date + 30)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            sql(roles["reporting"], "SELECT queueflow_drop_event_day(current_date)")

        # A grant taken away: the worker says which, once, and goes unready meanwhile.
        sql(roles["admin"], f"REVOKE INSERT ON events FROM {urlsplit(roles['worker']).username}")
        more = workload(100, seed=11)
        send(ingest.url, more)
        deadline = time.monotonic() + 20
        while (ready := httpx.get(f"{worker.url}/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "the worker never said it could not write"
            time.sleep(0.1)
        consumer = ready.json()["checks"]["consumer"]
        assert "SQLSTATE 42501" in consumer and "permission denied for table events" in consumer
        time.sleep(1.5)  # several retries later
        refusals = [
            line for line in worker.log_lines() if "refused the statement" in line.get("event", "")
        ]
        assert len(refusals) == 1, refusals
        assert worker.metric('queueflow_worker_events_dead_lettered_total{reason="rejected"}') == 0

        sql(roles["admin"], f"GRANT INSERT ON events TO {urlsplit(roles['worker']).username}")
        wait_until_exact(roles["admin"], events + more)
        deadline = time.monotonic() + 10
        while httpx.get(f"{worker.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for service in services:
            assert service.stop() == 0
