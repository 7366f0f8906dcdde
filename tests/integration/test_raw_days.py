"""Raw events by day (DESIGN.md "Growth"): one partition per UTC day, deduplication exact per
site whatever the day, retention dropping whole days while every aggregate stays, and
`verify` checking only the days whose raw events are kept."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from queueflow.core.config import Settings
from queueflow.core.events import EventWindow, decode_event, encode_event
from queueflow.core.retention import DAYS_AHEAD, apply_retention
from queueflow.core.store import EventStore, create_pool, stored_event
from queueflow.worker.raw_days import keep_raw_days
from tests.integration.test_operator import queueflow

TODAY = datetime.now(UTC).date()
DAYS = 40
KEEP = 30
FIRST = TODAY - timedelta(days=DAYS - 1)


def at(days_ago: int, minute: int = 0) -> str:
    start = datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time(), UTC)
    return (start + timedelta(minutes=minute)).isoformat()


def backfill() -> list[dict]:
    """40 days of two sites, users recurring across days, each day's events over its hours."""
    events = []
    for i in range(1600):
        days_ago = i % DAYS
        events.append(
            {
                "site_id": "a.example" if i % 4 else "b.example",
                "event_id": f"e{i}",
                "event_type": "page_view" if i % 5 else "signup",
                "path": f"/p{i % 7}",
                "user_id": f"u{i % 23}",
                "timestamp": at(days_ago, (i * 37) % 1440 if days_ago else 0),
                **({"referrer": f"https://r{i % 3}.example/"} if i % 2 else {}),
            }
        )
    return events


def rows(events: list[dict]) -> list[bytes]:
    window = EventWindow(0)  # back-fills: any age
    received = int(time.time() * 1000)
    return [
        stored_event(encode_event(decode_event(json.dumps(e).encode(), window)), received)
        for e in events
    ]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(database_url, max_size=2)
    try:
        yield EventStore(pool)
    finally:
        await pool.close()


async def figures(store: EventStore, site: str) -> dict:
    """What the reporting routes answer for the whole back-fill."""
    totals = await store.totals(site, FIRST, TODAY, 100)
    return {
        "totals": (totals.views, totals.unique_users, totals.top_paths),
        "days": [(p.views, p.unique_users) for p in await store.series(site, FIRST, TODAY, False)],
        "hours": [(p.views, p.unique_users) for p in await store.series(site, FIRST, TODAY, True)],
        "values": {
            d: [
                (r.value, r.events, r.unique_users)
                for r in await store.breakdown(site, FIRST, TODAY, d, 100)
            ]
            for d in ("path", "referrer", "event_type")
        },
        "sites": [
            (s.site_id, s.first_date, s.last_date, s.total_views) for s in await store.sites(None)
        ],
    }


def recount(events: list[dict], site: str) -> dict:
    """The whole-range figures of a site, from the events themselves."""
    mine = [e for e in events if e["site_id"] == site]
    views = [e for e in mine if e["event_type"] == "page_view"]
    paths = Counter(e["path"] for e in views)
    return {
        "views": len(views),
        "users": len({e["user_id"] for e in mine}),
        "paths": sorted(paths.items(), key=lambda pv: (-pv[1], pv[0])),
    }


async def test_an_event_id_counts_once_per_site_whatever_its_day(store: EventStore) -> None:
    """A resend on a later day, a late duplicate carrying its original timestamp, and a
    resend whose timestamp falls on another day are all caught: event_ids holds the key."""
    first = [
        {
            "site_id": "s",
            "event_id": "x",
            "event_type": "page_view",
            "path": "/",
            "user_id": "u",
            "timestamp": at(9, 5),
        }
    ]
    assert await store.save_batch(rows(first)) == 1
    late = [{**first[0], "timestamp": at(9, 5)}]  # the same event, days later
    other_day = [{**first[0], "timestamp": at(0, 1)}]  # the same id, another day's timestamp
    other_site = [{**first[0], "site_id": "t"}]  # another site's id x: its own event
    assert await store.save_batch(rows(late)) == 0
    assert await store.save_batch(rows(other_day)) == 0
    assert await store.save_batch(rows(other_site)) == 1
    both = await asyncio.gather(*(store.save_batch(rows(first + other_day)) for _ in range(4)))
    assert both == [0, 0, 0, 0]
    totals = await store.totals("s", FIRST, TODAY, 10)
    assert (totals.views, totals.unique_users) == (1, 1)
    assert [p.views for p in await store.series("s", TODAY, TODAY, False)] == [0]


async def test_a_back_filled_day_gets_its_partition_from_the_batch_that_needs_it(
    store: EventStore, database_url: str
) -> None:
    """Days are added a week ahead; a back-fill of older days adds its own, even when several
    workers need the same new day at once, and nothing is set aside."""
    long_ago = TODAY - timedelta(days=400)
    assert long_ago not in await store.event_days()
    events = [
        {
            "site_id": "s",
            "event_id": f"old{i}",
            "event_type": "page_view",
            "path": "/",
            "user_id": f"u{i}",
            "timestamp": at(400 + i % 2, i),
        }
        for i in range(40)
    ]
    batches = [rows(events[i::4]) for i in range(4)]

    async def save(batch: list[bytes]) -> int:
        for _ in range(5):  # as the worker does: a lock not had in time is tried again
            try:
                return await store.save_batch(batch)
            except asyncpg.LockNotAvailableError:
                await asyncio.sleep(0.1)
        raise AssertionError("never stored")

    assert sum(await asyncio.gather(*(save(b) for b in batches))) == 40
    assert {long_ago, long_ago - timedelta(days=1)} <= set(await store.event_days())
    assert (await store.audit(long_ago - timedelta(days=1), long_ago, None)).clean


async def test_retention_drops_whole_days_and_every_route_still_answers(
    store: EventStore, settings: Settings, database_url: str
) -> None:
    events = backfill()
    assert await store.save_batch(rows(events)) == len(events)
    before = {site: await figures(store, site) for site in ("a.example", "b.example")}
    for site in ("a.example", "b.example"):  # the aggregates are the events' own recount
        expected = recount(events, site)
        assert before[site]["totals"] == (expected["views"], expected["users"], expected["paths"])

    env = {"QUEUEFLOW_RAW_RETENTION_DAYS": str(KEEP), "QUEUEFLOW_MAX_EVENT_AGE_DAYS": "20"}
    done = queueflow(settings, "retention", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    expired = [TODAY - timedelta(days=d) for d in range(DAYS - 1, KEEP, -1)]
    assert done.stdout.splitlines() == [
        *(f"removed the raw events of {day}" for day in expired),
        f"removed {len(expired)} days; raw events are kept for {KEEP} days before today",
    ]
    days = await store.event_days()
    assert min(days) == TODAY - timedelta(days=KEEP)
    conn = await asyncpg.connect(database_url)
    try:
        kept_from = TODAY - timedelta(days=KEEP)
        assert await conn.fetchval("SELECT min(date) FROM events") == kept_from
        assert await conn.fetchval("SELECT min(date) FROM event_ids") == kept_from
        kept = [e for e in events if e["timestamp"][:10] >= str(kept_from)]
        assert await conn.fetchval("SELECT count(*) FROM events") == len(kept)
        assert await conn.fetchval("SELECT count(*) FROM event_ids") == len(kept)
    finally:
        await conn.close()
    # Aggregates and user sets stay: every route answers as before, removed days included.
    assert {site: await figures(store, site) for site in before} == before

    check = queueflow(settings, "verify", "--from", str(FIRST), "--to", str(TODAY))
    assert check.returncode == 0, check.stdout
    site_days = len({(e["site_id"], e["timestamp"][:10]) for e in kept})
    assert check.stdout.splitlines() == [
        f"skipped {FIRST} to {expired[-1]}: their raw events were removed "
        "(QUEUEFLOW_RAW_RETENTION_DAYS); their aggregates stay",
        f"verified {site_days} site-days (all sites, {kept_from} to {TODAY}): "
        "aggregates match the events",
    ]
    only_removed = queueflow(settings, "verify", "--from", str(FIRST), "--to", str(FIRST))
    assert only_removed.returncode == 0 and only_removed.stdout.startswith(f"skipped {FIRST}")
    # Repair rebuilds only the kept days: the removed ones keep their figures.
    repaired = queueflow(settings, "verify", "--from", str(FIRST), "--to", str(TODAY), "--repair")
    assert repaired.returncode == 0
    assert {site: await figures(store, site) for site in before} == before

    again = queueflow(settings, "retention", env=env)
    assert again.stdout.splitlines()[-1].startswith("removed 0 days")
    # A resend of a kept event is still caught after the removal.
    assert await store.save_batch(rows(kept[:50])) == 0


async def test_forgetting_a_user_after_retention_leaves_them_in_no_user_set(
    store: EventStore, settings: Settings
) -> None:
    """Their kept events go and their counts with them; on removed days their anonymous view
    counts stay (no raw event says which were theirs), but no user set holds them."""
    events = backfill()
    assert await store.save_batch(rows(events)) == len(events)
    assert await apply_retention(store, KEEP) != []
    gone = queueflow(settings, "forget", "--site-id", "a.example", "--user-id", "u1")
    assert gone.returncode == 0, gone.stdout
    without = [e for e in events if e["site_id"] == "a.example" and e["user_id"] != "u1"]
    totals = await store.totals("a.example", FIRST, TODAY, 100)
    assert totals.unique_users == len({e["user_id"] for e in without})
    kept_from = str(TODAY - timedelta(days=KEEP))
    kept_views = sum(
        e["event_type"] == "page_view" for e in without if e["timestamp"][:10] >= kept_from
    )
    kept_totals = await store.totals("a.example", date.fromisoformat(kept_from), TODAY, 100)
    assert kept_totals.views == kept_views
    check = queueflow(settings, "verify", "--from", str(FIRST), "--to", str(TODAY))
    assert check.returncode == 0 and "match" in check.stdout, check.stdout


async def test_workers_add_days_ahead_and_apply_retention_at_start(
    store: EventStore, settings: Settings
) -> None:
    events = backfill()
    assert await store.save_batch(rows(events)) == len(events)
    stop = asyncio.Event()
    keeping = asyncio.create_task(
        keep_raw_days(store, settings.model_copy(update={"raw_retention_days": KEEP}), stop)
    )
    ahead = TODAY + timedelta(days=DAYS_AHEAD)

    async def done() -> bool:
        days = await store.event_days()
        return ahead in days and min(days) == TODAY - timedelta(days=KEEP)

    for _ in range(100):
        if await done():
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(keeping, 5)
    assert await done()


async def test_retention_zero_keeps_everything(settings: Settings) -> None:
    done = queueflow(settings, "retention")
    assert done.returncode == 0
    assert "kept forever" in done.stdout


async def test_a_day_being_removed_never_takes_a_resend_twice(
    store: EventStore, database_url: str
) -> None:
    """Retention stopped after detaching a day (before its ids went): a resend of that day's
    event is still a duplicate, a new event for it is refused as a data error (set aside, not
    stored), and the next retention finishes the day."""
    events = backfill()[:200]
    assert await store.save_batch(rows(events)) == len(events)
    oldest = TODAY - timedelta(days=DAYS - 1)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT queueflow_detach_event_day($1)", oldest)
        views = "SELECT total_views FROM daily_site_stats WHERE date = $1 ORDER BY site_id"
        before = await conn.fetch(views, oldest)
        resend = [e for e in events if e["timestamp"][:10] == str(oldest)]
        assert await store.save_batch(rows(resend[:1])) == 0  # its id is still known
        with pytest.raises(asyncpg.CheckViolationError):  # a new id for that day: refused
            await store.save_batch(rows([{**resend[0], "event_id": "late"}]))
        assert await conn.fetch(views, oldest) == before
        assert await store.event_days(detached=True) == [oldest]
        assert oldest in await apply_retention(store, KEEP)
        assert await store.event_days(detached=True) == []
        assert await conn.fetchval("SELECT count(*) FROM event_ids WHERE date = $1", oldest) == 0
        with pytest.raises(asyncpg.RaiseError):  # never yesterday's or today's
            await conn.fetchval("SELECT queueflow_detach_event_day($1)", TODAY - timedelta(1))
    finally:
        await conn.close()


async def test_days_are_utc_days_whatever_the_session_says(database_url: str) -> None:
    """A caller whose session writes times in another zone and style (PostgreSQL 15 reads
    some zone abbreviations back wrong) still gets UTC-midnight bounds, and retention's
    cursor still advances."""
    day = TODAY - timedelta(days=200)
    conn = await asyncpg.connect(
        database_url, server_settings={"DateStyle": "SQL, MDY", "TimeZone": "Europe/Dublin"}
    )
    try:
        assert await conn.fetchval("SELECT queueflow_add_event_day($1)", day)
        assert await conn.fetchval("SELECT queueflow_add_event_day($1)", day + timedelta(1))
        bounds = await _bounds(database_url, f"events_d{day:%Y%m%d}")  # read back in UTC
        assert f"'{day} 00:00:00+00'" in bounds and f"'{day + timedelta(1)} 00:00:00+00'" in bounds
        stamp = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=13)
        await conn.execute(
            "INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at,"
            " received_at) SELECT 'e' || i, 's', 'page_view', '/', 'u', $1, $1"
            " FROM generate_series(1, 25) AS i",
            stamp,
        )
        await conn.execute(
            "INSERT INTO event_ids SELECT site_id, event_id, date FROM events WHERE date = $1", day
        )
        assert await conn.fetchval("SELECT queueflow_detach_event_day($1)", day)
        after, calls = None, 0
        while (
            after := await conn.fetchval(
                "SELECT queueflow_expire_event_ids($1, 10, $2)", day, after
            )
        ) is not None:
            calls += 1
            assert calls < 10, after
        assert calls == 3
        assert await conn.fetchval("SELECT count(*) FROM event_ids WHERE date = $1", day) == 0
    finally:
        await conn.close()


async def _bounds(database_url: str, partition: str) -> str:
    conn = await asyncpg.connect(database_url, server_settings={"TimeZone": "UTC"})
    try:
        query = "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1"
        return await conn.fetchval(query, partition)
    finally:
        await conn.close()


async def test_a_callers_temporary_table_is_never_taken_for_a_partition(
    store: EventStore, database_url: str
) -> None:
    day = TODAY - timedelta(days=300)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE TEMPORARY TABLE events_d{day:%Y%m%d} AS SELECT * FROM event_ids"
        )
        victim = [
            {
                "site_id": "victim",
                "event_id": "v1",
                "event_type": "page_view",
                "path": "/",
                "user_id": "u",
                "timestamp": at(1),
            }
        ]
        assert await store.save_batch(rows(victim)) == 1
        await conn.execute(f"INSERT INTO events_d{day:%Y%m%d} SELECT * FROM event_ids")
        assert await conn.fetchval("SELECT queueflow_expire_event_ids($1, 10, NULL)", day) is None
        assert await conn.fetchval("SELECT count(*) FROM event_ids WHERE site_id = 'victim'") == 1
        assert await conn.fetchval("SELECT queueflow_add_event_day($1)", day)  # the real one
        assert day in await store.event_days()
    finally:
        await conn.close()


async def test_a_day_is_added_while_a_long_reader_holds_the_events(
    store: EventStore, database_url: str
) -> None:
    """Attaching a new day does not wait for readers, nor make writers wait."""
    reader = await asyncpg.connect(database_url)
    try:
        reading = reader.transaction(isolation="repeatable_read")
        await reading.start()
        await reader.fetchval("SELECT count(*) FROM events")  # as verify does, for minutes
        started = time.monotonic()
        assert await store.add_event_days([TODAY + timedelta(days=40)]) == [
            TODAY + timedelta(days=40)
        ]
        batch = [
            {
                "site_id": "s",
                "event_id": "during",
                "event_type": "page_view",
                "path": "/",
                "user_id": "u",
                "timestamp": at(0),
            }
        ]
        assert await store.save_batch(rows(batch)) == 1
        assert time.monotonic() - started < 1.5
        await reading.rollback()
    finally:
        await reader.close()


async def test_retention_gives_way_to_a_long_reader(
    store: EventStore, settings: Settings, database_url: str
) -> None:
    """Detaching a day waits at most 2 s behind a reader (a verify), so the workers' batches
    queued behind it are never stalled for long; it says so, and the next try removes it."""
    events = backfill()
    assert await store.save_batch(rows(events)) == len(events)
    reader = await asyncpg.connect(database_url)
    try:
        reading = reader.transaction(isolation="repeatable_read")
        await reading.start()
        await reader.fetchval("SELECT count(*) FROM events")
        env = {"QUEUEFLOW_RAW_RETENTION_DAYS": str(KEEP)}
        held = queueflow(settings, "retention", env=env)
        assert held.returncode == 1 and "try again later" in held.stdout, held.stdout
        await reading.rollback()
    finally:
        await reader.close()
    assert min(await store.event_days()) == FIRST
    done = queueflow(settings, "retention", env=env)
    assert done.returncode == 0 and done.stdout.startswith("note: "), done.stdout
    assert min(await store.event_days()) == TODAY - timedelta(days=KEEP)
