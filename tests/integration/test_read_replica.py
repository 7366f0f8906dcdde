"""Reporting from a PostgreSQL read replica (DATABASE_READ_URL): a real streaming replica of a
real primary, both started here. Reporting's answers come from the replica (they still come
with the primary stopped); workers and migrations use only DATABASE_URL."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import httpx

from queueflow.core.events import EventWindow, decode_event, encode_event
from queueflow.core.migrations import default_migrations_dir, migrate
from queueflow.core.store import EventStore, create_pool, stored_event
from queueflow.embedded import start_postgres
from tests.helpers import Service, expected_stats, workload


async def store(url: str, events: list[dict]) -> None:
    pool = await create_pool(url, max_size=1)
    try:
        rows = [
            stored_event(encode_event(decode_event(json.dumps(e).encode(), EventWindow(30))), 1)
            for e in events
        ]
        assert await EventStore(pool).save_batch(rows) == len({e["event_id"] for e in events})
    finally:
        await pool.close()


async def replayed(replica: str, count: int) -> None:
    conn = await asyncpg.connect(replica)
    try:
        deadline = time.monotonic() + 20
        while await conn.fetchval("SELECT count(*) FROM events") < count:
            assert time.monotonic() < deadline, "the replica never caught up"
            await asyncio.sleep(0.1)
        assert await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()


def test_reporting_reads_the_replica(tmp_path: Path) -> None:
    primary = start_postgres(tmp_path / "primary", durable=False)
    replica = None
    reporting = None
    try:
        asyncio.run(migrate(primary.url, default_migrations_dir()))
        replica = start_postgres(tmp_path / "replica", durable=False, replica_of=primary.url)
        events = workload(300)
        asyncio.run(store(primary.url, events))
        asyncio.run(replayed(replica.url, len({e["event_id"] for e in events})))
        reporting = Service(
            "reporting",
            {
                "DATABASE_URL": primary.url,
                "DATABASE_READ_URL": replica.url,
                "QUEUEFLOW_AUTO_MIGRATE": "false",
            },
        ).wait_healthy()
        (site, day), expected = max(
            expected_stats(events).items(), key=lambda kv: kv[1]["total_views"]
        )
        params = {"site_id": site, "date": day.isoformat()}
        first = httpx.get(f"{reporting.url}/stats", params=params).json()
        assert (first["total_views"], first["unique_users"]) == (
            expected["total_views"],
            expected["unique_users"],
        )
        primary.stop()  # the answers never came from it
        assert httpx.get(f"{reporting.url}/stats", params=params).json() == first
        assert httpx.get(f"{reporting.url}/readyz").status_code == 200
    finally:
        if reporting is not None:
            reporting.stop()
        if replica is not None:
            replica.stop()
        primary.stop()
