"""`queueflow verify` and `queueflow dead-letters`, run as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

from queueflow.core.config import Settings
from queueflow.core.stream import EVENT_FIELD
from queueflow.worker.consumer import Consumer
from tests.helpers import group_state, payload, running, service_env, until

TODAY = datetime.now(UTC).date().isoformat()


def queueflow(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **service_env(settings), "QUEUEFLOW_LOG_LEVEL": "warning", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "queueflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def drain(parts, settings: Settings, events: int) -> None:
    stream, store = parts
    async with running(Consumer(stream, store, settings)):
        await until(lambda: _drained(stream, settings))


async def _drained(stream, settings) -> bool:
    return await group_state(stream.client, settings) == (0, 0)


async def test_verify_passes_then_catches_and_repairs_a_tampered_aggregate(parts, settings, db):
    stream, _ = parts
    await stream.add(
        [payload(event_id=f"v{i}", path=f"/p{i % 3}", user_id=f"u{i % 4}") for i in range(12)]
    )
    await drain(parts, settings, 12)
    ok = queueflow(settings, "verify", "--from", TODAY)
    assert ok.returncode == 0 and "match" in ok.stdout, ok.stdout + ok.stderr

    await db.execute("UPDATE daily_site_stats SET total_views = total_views + 1")
    await db.execute("UPDATE daily_value_counts SET events = 99 WHERE value = '/p1'")
    await db.execute("DELETE FROM daily_user_bits")
    bad = queueflow(settings, "verify", "--from", TODAY, "--site-id", "site-1")
    assert bad.returncode == 1
    assert "total_views 13 (events say 12), unique_users 0 (events say 4)" in bad.stdout
    assert "path /p1: events 99 (events say 4)" in bad.stdout, bad.stdout
    assert "rows of the user bitmaps differ" in bad.stdout

    backwards = queueflow(settings, "verify", "--from", TODAY, "--to", "2020-01-01")
    assert backwards.returncode == 2 and "before --from" in backwards.stderr

    fixed = queueflow(settings, "verify", "--from", TODAY, "--repair")
    assert fixed.returncode == 0 and "now match" in fixed.stdout
    assert await db.fetchval("SELECT total_views FROM daily_site_stats") == 12
    assert queueflow(settings, "verify", "--from", TODAY).returncode == 0


async def test_dead_letters_are_listed_shown_replayed_once_and_purged(
    parts, settings, db, redis_client
) -> None:
    stream, _ = parts
    await stream.ensure_group()
    good = payload(event_id="kept-1")
    await redis_client.xadd(settings.stream, {EVENT_FIELD: good})
    (entry,) = await stream.read_new("w", count=1, block_ms=100)
    await stream.dead_letter(entry, "rejected by database: test", 1)
    await redis_client.xadd(settings.dead_letter_stream, {b"junk": b"x", b"reason": b"undecodable"})

    listed = queueflow(settings, "dead-letters", "list")
    assert listed.returncode == 0
    assert "2 dead letters" in listed.stdout and "event_id=kept-1" in listed.stdout
    letter_id = listed.stdout.splitlines()[1].split()[0]
    shown = json.loads(queueflow(settings, "dead-letters", "show", letter_id).stdout)
    assert shown["reason"] == "rejected by database: test" and shown["deliveries"] == 1
    assert json.loads(shown["fields"]["event"])["event_id"] == "kept-1"

    # Replaying twice (as after a crash between re-append and delete) still counts once.
    await redis_client.xadd(settings.stream, {EVENT_FIELD: good})
    replayed = queueflow(settings, "dead-letters", "replay", "--all")
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
    assert "left 1 without an event field" in replayed.stdout
    await drain(parts, settings, 2)
    assert await db.fetchval("SELECT total_views FROM daily_site_stats") == 1

    purged = queueflow(settings, "dead-letters", "purge", "--all")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert await redis_client.xlen(settings.dead_letter_stream) == 0
    assert queueflow(settings, "dead-letters", "replay").returncode == 2
