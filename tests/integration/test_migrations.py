"""`queueflow migrate`: each file once, in order, under a lock, refusing edited history."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from queueflow.core.errors import MigrationError
from queueflow.core.migrations import default_migrations_dir, load_migrations, migrate
from tests.conftest import with_database
from tests.helpers import Service, service_env
from tests.integration.old_statements import SAVE_BATCH_BEFORE_0004, SAVE_BATCH_BEFORE_0005


def migrations_up_to(tmp_path: Path, version: str) -> Path:
    """A directory of the migrations up to `version`, as an earlier release shipped them."""
    directory = tmp_path / f"up_to_{version}"
    directory.mkdir()
    for m in load_migrations(default_migrations_dir()):
        if m.version <= version:
            shutil.copy(default_migrations_dir() / f"{m.version}_{m.name}.sql", directory)
    return directory


@pytest.fixture
async def empty_database(servers: dict[str, str]) -> AsyncIterator[str]:
    name = f"qf_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(servers["postgres"])
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(servers["postgres"], name)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


def test_the_shipped_migrations_are_numbered_and_in_order() -> None:
    migrations = load_migrations(default_migrations_dir())
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and versions[0] == "0001"


async def test_applies_each_file_once(empty_database: str) -> None:
    first = await migrate(empty_database, default_migrations_dir())
    assert first == [m.version for m in load_migrations(default_migrations_dir())]
    assert await migrate(empty_database, default_migrations_dir()) == []
    conn = await asyncpg.connect(empty_database)
    tables = {
        r[0]
        for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    await conn.close()
    assert {
        "events",
        "daily_site_stats",
        "daily_value_counts",
        "daily_user_bits",
        "hourly_user_bits",
        "daily_value_user_bits",
        "site_users",
        "sites",
        "schema_migrations",
    } <= tables


async def test_pods_migrating_together_apply_everything_exactly_once(empty_database: str) -> None:
    results = await asyncio.gather(
        *(migrate(empty_database, default_migrations_dir()) for _ in range(5))
    )
    applied = [v for r in results for v in r]
    assert sorted(applied) == [m.version for m in load_migrations(default_migrations_dir())]


async def test_an_edited_applied_migration_is_refused(empty_database: str, tmp_path: Path) -> None:
    shutil.copytree(default_migrations_dir(), tmp_path / "m")
    await migrate(empty_database, tmp_path / "m")
    first = sorted((tmp_path / "m").glob("0001_*.sql"))[0]
    first.write_text(first.read_text().replace("CREATE INDEX", "CREATE UNIQUE INDEX"))
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_database, tmp_path / "m")


async def test_comments_and_the_down_section_may_change_after_applying(
    empty_database: str, tmp_path: Path
) -> None:
    """Only what runs is checked: rewording a comment or adding a down section must not stop
    a deploy."""
    shutil.copytree(default_migrations_dir(), tmp_path / "m")
    await migrate(empty_database, tmp_path / "m")
    first = sorted((tmp_path / "m").glob("0001_*.sql"))[0]
    text = first.read_text().replace("-- Raw events", "-- The raw events")
    first.write_text(text + "\n   -- an added comment\n\n-- migrate:down\nDROP TABLE events;\n")
    assert await migrate(empty_database, tmp_path / "m") == []


async def test_databases_that_recorded_whole_file_checksums_still_migrate(
    empty_database: str,
) -> None:
    await migrate(empty_database, default_migrations_dir())
    conn = await asyncpg.connect(empty_database)
    try:
        for m in load_migrations(default_migrations_dir()):
            await conn.execute(
                "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                m.version,
                m.legacy_checksum,
            )
    finally:
        await conn.close()
    assert await migrate(empty_database, default_migrations_dir()) == []


async def test_a_failing_migration_rolls_back_and_records_nothing(
    empty_database: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_ok.sql").write_text("-- migrate:up\nCREATE TABLE a (x int);\n")
    (tmp_path / "0002_bad.sql").write_text("-- migrate:up\nCREATE TABLE b (x int);\nSELEC 1;\n")
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate(empty_database, tmp_path)
    conn = await asyncpg.connect(empty_database)
    assert await conn.fetchval("SELECT to_regclass('b')") is None
    assert [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")] == ["0001"]
    await conn.close()


def test_the_migrate_command(empty_database: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": empty_database, "QUEUEFLOW_LOG_LEVEL": "error"}
    run = [sys.executable, "-m", "queueflow", "migrate"]
    assert subprocess.run(run, env=env, timeout=60).returncode == 0
    assert subprocess.run(run, env=env, timeout=60).returncode == 0


def test_a_worker_started_on_an_empty_database_migrates_it(empty_database: str, settings) -> None:
    env = {**service_env(settings), "DATABASE_URL": empty_database}
    worker = Service("worker", env).wait_healthy()
    try:
        deadline = time.monotonic() + 10
        while httpx.get(f"{worker.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert asyncio.run(_applied_versions(empty_database))
    finally:
        assert worker.stop() == 0


def test_auto_migrate_can_be_turned_off(empty_database: str, settings) -> None:
    env = {
        **service_env(settings),
        "DATABASE_URL": empty_database,
        "QUEUEFLOW_AUTO_MIGRATE": "false",
    }
    worker = Service("worker", env).wait_healthy()
    try:
        time.sleep(0.5)
        assert asyncio.run(_applied_versions(empty_database)) == []
    finally:
        assert worker.stop() == 0


async def _applied_versions(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return []
        return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()


async def test_ids_per_site_migration_keeps_every_event_and_count(
    empty_database: str, tmp_path: Path
) -> None:
    """0003 moves the events key from event_id to (site_id, event_id) on a populated
    database: nothing stored is lost or recounted, and afterwards ids are per site."""
    from queueflow.core.store import batch_document
    from tests.helpers import payload

    await migrate(empty_database, migrations_up_to(tmp_path, "0002"))
    conn = await asyncpg.connect(empty_database)
    try:
        rows = [
            b'{"received_ms":1,' + payload(site_id=f"s{i % 3}", event_id=f"e{i}")[1:]
            for i in range(300)
        ]
        # The batch statement as it was before 0003, when event_id alone was the key.
        before_0003 = SAVE_BATCH_BEFORE_0004.replace("(site_id, event_id) DO", "(event_id) DO")
        assert await conn.fetchval(before_0003, batch_document(rows)) == 300
        snapshot = "SELECT * FROM {} ORDER BY 1, 2, 3"
        tables = ("events", "daily_site_stats", "daily_site_path_counts", "daily_site_users")
        old = {t: [dict(r) for r in await conn.fetch(snapshot.format(t))] for t in tables}
        assert await migrate(empty_database, migrations_up_to(tmp_path, "0003")) == ["0003"]
        new = {t: [dict(r) for r in await conn.fetch(snapshot.format(t))] for t in tables}
        assert new == old
        key = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'events_pkey'"
        )
        assert key == "PRIMARY KEY (site_id, event_id)"
        # Site s9 reusing s0's id e0 is a new event; s0 resending it is a duplicate.
        again = [
            b'{"received_ms":2,' + payload(site_id="s9", event_id="e0")[1:],
            b'{"received_ms":2,' + payload(site_id="s0", event_id="e0")[1:],
        ]
        assert await conn.fetchval(SAVE_BATCH_BEFORE_0004, batch_document(again)) == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE event_id = 'e0'") == 2
    finally:
        await conn.close()


async def test_range_reporting_migration_counts_the_stored_history(
    empty_database: str, tmp_path: Path
) -> None:
    """0004 fills the range structures from a populated database's raw events: every route's
    figures equal a recount, users recurring across days count once over the range, and
    verify is clean; then the workers' statement carries on from there."""
    from datetime import UTC, date, datetime, timedelta

    from queueflow.core.events import EventWindow, decode_event, encode_event
    from queueflow.core.store import EventStore, batch_document, create_pool

    def stored_event(e: dict) -> bytes:
        fields = {k: v for k, v in e.items() if v is not None}
        return (
            b'{"received_ms":1,'
            + encode_event(decode_event(json.dumps(fields).encode(), EventWindow(0)))[1:]
        )

    await migrate(empty_database, migrations_up_to(tmp_path, "0003"))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = [
        {
            "site_id": f"s{i % 2}",
            "event_id": f"e{i}",
            "event_type": "page_view" if i % 4 else "click",
            "path": f"/p{i % 5}",
            "user_id": f"u{i % 7}",
            "referrer": None if i % 3 else f"https://r{i % 2}.example/",
            "timestamp": (start + timedelta(hours=5 * i)).isoformat(),
        }
        for i in range(60)
    ]
    stored = [stored_event(e) for e in events]
    conn = await asyncpg.connect(empty_database)
    pool = await create_pool(empty_database, max_size=2)
    try:
        assert await conn.fetchval(SAVE_BATCH_BEFORE_0004, batch_document(stored)) == 60
        assert await migrate(empty_database, default_migrations_dir()) == ["0004", "0005"]
        store = EventStore(pool)
        first, last = date(2026, 3, 1), date(2026, 3, 31)
        assert (await store.audit(first, last, None)).clean
        for site in ("s0", "s1"):
            mine = [e for e in events if e["site_id"] == site]
            views = [e for e in mine if e["event_type"] == "page_view"]
            totals = await store.totals(site, first, last, 10)
            assert totals.views == len(views)
            assert (
                totals.unique_users
                == len({e["user_id"] for e in mine})
                < len({(e["user_id"], e["timestamp"][:10]) for e in mine})
            )
            rows = await store.breakdown(site, first, last, "referrer", 10)
            by_referrer: dict[str | None, set[str]] = {}
            for e in views:
                by_referrer.setdefault(e["referrer"], set()).add(e["user_id"])
            assert {(r.value, r.unique_users) for r in rows} == {
                (k, len(v)) for k, v in by_referrer.items()
            }
        # New events of known and new users fold into the migrated figures.
        more = [
            stored_event({**events[0], "event_id": "n1"}),
            stored_event({**events[0], "event_id": "n2", "user_id": "new"}),
        ]
        assert await store.save_batch(more) == 2
        assert (await store.audit(first, last, None)).clean
        s0_users = {e["user_id"] for e in events if e["site_id"] == "s0"} | {"new"}
        assert (await store.totals("s0", first, last, 1)).unique_users == len(s0_users)
    finally:
        await pool.close()
        await conn.close()


async def test_range_reporting_migration_holds_off_the_previous_workers(
    empty_database: str, tmp_path: Path
) -> None:
    """A previous release's worker committing while 0004 runs waits for it, then fails without
    storing anything (so it acknowledges nothing): no batch lands in some tables only."""
    from queueflow.core.store import EventStore, batch_document, create_pool
    from tests.helpers import payload, until

    await migrate(empty_database, migrations_up_to(tmp_path, "0003"))
    old_worker = await asyncpg.connect(empty_database)
    rows = [b'{"received_ms":1,' + payload(event_id=f"m{i}")[1:] for i in range(20)]
    assert await old_worker.fetchval(SAVE_BATCH_BEFORE_0004, batch_document(rows[:10])) == 10
    # A reader keeps 0004 from dropping the old tables, so it is caught holding its lock.
    reader, watcher = await asyncpg.connect(empty_database), await asyncpg.connect(empty_database)
    reading = reader.transaction()
    await reading.start()
    await reader.fetchval("SELECT count(*) FROM daily_site_users")
    migrating = asyncio.create_task(migrate(empty_database, default_migrations_dir()))
    waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
    await until(lambda: watcher.fetchval(waiting + " AND mode = 'AccessExclusiveLock'"))
    batch = asyncio.create_task(
        old_worker.fetchval(SAVE_BATCH_BEFORE_0004, batch_document(rows[10:]))
    )
    # Held off at its first table: nothing of the batch is written anywhere.
    held_off = " AND mode = 'RowExclusiveLock' AND relation = 'events'::regclass"
    await until(lambda: watcher.fetchval(waiting + held_off))
    await reading.commit()
    with pytest.raises(asyncpg.PostgresError):
        await batch
    assert await migrating == ["0004", "0005"]
    pool = await create_pool(empty_database, max_size=1)
    try:
        assert await watcher.fetchval("SELECT count(*) FROM events") == 10
        today = datetime.now(UTC).date()
        assert (await EventStore(pool).audit(today - timedelta(days=1), today, None)).clean
    finally:
        await pool.close()
        await watcher.close()
        await reader.close()
        await old_worker.close()


def _days_ago_event(site: str, event_id: str, days: int, **fields: object) -> bytes:
    """A stored event `days` days before now (back-fills: no age limit)."""
    from queueflow.core.events import EventWindow, decode_event, encode_event
    from tests.helpers import event

    stamp = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    raw = event(site_id=site, event_id=event_id, timestamp=stamp, **fields)
    return (
        b'{"received_ms":1,'
        + encode_event(decode_event(json.dumps(raw).encode(), EventWindow(0)))[1:]
    )


async def test_partitioning_migration_keeps_every_stored_event(
    empty_database: str, tmp_path: Path
) -> None:
    """0005 moves a populated unpartitioned events table into a partition per day: every
    stored event is there once, with its id in event_ids, the aggregates are untouched and
    verify is clean; resends of stored events, on their day or another, are still caught."""
    from queueflow.core.store import SAVE_BATCH, EventStore, batch_document, create_pool

    await migrate(empty_database, migrations_up_to(tmp_path, "0004"))
    conn = await asyncpg.connect(empty_database)
    pool = await create_pool(empty_database, max_size=1)
    try:
        rows = [
            _days_ago_event(f"s{i % 3}", f"e{i}", i % 6, user_id=f"u{i % 7}", path=f"/p{i % 4}")
            for i in range(400)
        ]
        rows.append(rows[5])  # a resend in the same batch
        rows.append(_days_ago_event("s9", "e0", 2))  # another site's id e0: its own event
        assert await conn.fetchval(SAVE_BATCH_BEFORE_0005, batch_document(rows)) == 401
        keys = "SELECT site_id, event_id, occurred_at, user_id, path FROM events ORDER BY 1, 2"
        aggregates = (
            "daily_site_stats",
            "hourly_site_stats",
            "daily_value_counts",
            "daily_user_bits",
            "site_users",
            "sites",
        )
        snapshot = "SELECT * FROM {} ORDER BY 1, 2, 3"
        before = [dict(r) for r in await conn.fetch(keys)]
        old = {t: [dict(r) for r in await conn.fetch(snapshot.format(t))] for t in aggregates}

        assert await migrate(empty_database, default_migrations_dir()) == ["0005"]
        assert [dict(r) for r in await conn.fetch(keys)] == before
        ids = "SELECT site_id, event_id, date FROM event_ids ORDER BY 1, 2"
        by_day = {
            (r["site_id"], r["event_id"], r["occurred_at"].astimezone(UTC).date()) for r in before
        }
        assert {tuple(r) for r in await conn.fetch(ids)} == by_day
        assert {
            t: [dict(r) for r in await conn.fetch(snapshot.format(t))] for t in aggregates
        } == old
        store = EventStore(pool)
        days = set(await store.event_days())
        today = datetime.now(UTC).date()
        assert {today - timedelta(days=d) for d in range(6)} <= days  # the history's days
        assert {today + timedelta(days=d) for d in range(8)} <= days  # and the week ahead
        # Each day's events are in that day's partition (a row outside its bounds cannot be).
        per_partition = await conn.fetch(
            "SELECT tableoid::regclass::text AS partition, min(date), max(date), count(*) "
            "FROM events GROUP BY 1"
        )
        assert all(r["min"] == r["max"] for r in per_partition)
        assert sum(r["count"] for r in per_partition) == 401
        assert (await store.audit(today - timedelta(days=6), today, None)).clean

        # The new workers' statement: a resend of a stored event counts nothing, whether it
        # carries its own timestamp or another day's; a new id is one event.
        again = [
            rows[7],
            _days_ago_event("s1", "e7", 4),
            _days_ago_event("s1", "e7", 0),
            _days_ago_event("s1", "fresh", 3),
        ]
        assert await conn.fetchval(SAVE_BATCH, batch_document(again)) == 1
        assert await conn.fetchval("SELECT count(*) FROM events") == 402
    finally:
        await pool.close()
        await conn.close()


async def test_partitioning_migration_holds_off_the_previous_workers(
    empty_database: str, tmp_path: Path
) -> None:
    """A previous release's worker committing while 0005 runs waits for it, then fails
    without storing anything (its ON CONFLICT names a key the new table does not have), so
    it acknowledges nothing and its entries go to the new workers."""
    from queueflow.core.store import batch_document
    from tests.helpers import payload, until

    await migrate(empty_database, migrations_up_to(tmp_path, "0004"))
    old_worker = await asyncpg.connect(empty_database)
    rows = [b'{"received_ms":1,' + payload(event_id=f"m{i}")[1:] for i in range(20)]
    assert await old_worker.fetchval(SAVE_BATCH_BEFORE_0005, batch_document(rows[:10])) == 10
    reader, watcher = await asyncpg.connect(empty_database), await asyncpg.connect(empty_database)
    reading = reader.transaction()
    await reading.start()
    await reader.fetchval("SELECT count(*) FROM events")  # keeps 0005 waiting at its rename
    migrating = asyncio.create_task(migrate(empty_database, default_migrations_dir()))
    waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
    await until(lambda: watcher.fetchval(waiting + " AND mode = 'AccessExclusiveLock'"))
    batch = asyncio.create_task(
        old_worker.fetchval(SAVE_BATCH_BEFORE_0005, batch_document(rows[10:]))
    )
    await until(lambda: watcher.fetchval(waiting + " AND mode = 'RowExclusiveLock'"))
    await reading.commit()
    with pytest.raises(asyncpg.PostgresError) as refused:
        await batch
    # Not a data error: a worker retries the batch instead of dead-lettering its events.
    assert refused.value.sqlstate[:2] not in ("22", "23"), refused.value
    assert await migrating == ["0005"]
    try:
        assert await watcher.fetchval("SELECT count(*) FROM events") == 10
        assert await watcher.fetchval("SELECT count(*) FROM event_ids") == 10
        assert await watcher.fetchval("SELECT sum(total_views) FROM daily_site_stats") == 10
    finally:
        await watcher.close()
        await reader.close()
        await old_worker.close()
