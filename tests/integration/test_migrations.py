"""`queueflow migrate`: each file once, in order, under a lock, refusing edited history."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from queueflow.core.errors import MigrationError
from queueflow.core.migrations import default_migrations_dir, load_migrations, migrate
from tests.conftest import with_database
from tests.helpers import Service, service_env


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
        "daily_site_path_counts",
        "daily_site_users",
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
    from queueflow.core.store import SAVE_BATCH, EventStore, batch_document, create_pool
    from tests.helpers import payload

    before = tmp_path / "before"
    before.mkdir()
    for m in sorted(default_migrations_dir().glob("000[12]_*.sql")):
        shutil.copy(m, before / m.name)
    await migrate(empty_database, before)
    pool = await create_pool(empty_database, max_size=2)
    store = EventStore(pool)
    try:
        rows = [
            b'{"received_ms":1,' + payload(site_id=f"s{i % 3}", event_id=f"e{i}")[1:]
            for i in range(300)
        ]
        conn = await asyncpg.connect(empty_database)
        # The batch statement as it was before 0003, when event_id alone was the key.
        before_0003 = SAVE_BATCH.replace("(site_id, event_id) DO", "(event_id) DO")
        assert await conn.fetchval(before_0003, batch_document(rows)) == 300
        snapshot = "SELECT * FROM {} ORDER BY 1, 2, 3"
        tables = ("events", "daily_site_stats", "daily_site_path_counts", "daily_site_users")
        old = {t: [dict(r) for r in await conn.fetch(snapshot.format(t))] for t in tables}
        assert await migrate(empty_database, default_migrations_dir()) == ["0003"]
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
        assert await store.save_batch(again) == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE event_id = 'e0'") == 2
        await conn.close()
    finally:
        await pool.close()
