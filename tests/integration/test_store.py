"""The worker's batch statement against a real PostgreSQL: the fold equals a naive recount,
whatever the batching, the duplicates and the concurrency."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import pytest

from queueflow.core.store import EventStore, create_pool, stored_event
from tests.helpers import expected_stats

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(database_url, max_size=4)
    yield EventStore(pool)
    await pool.close()


def random_events(rng: random.Random, n: int) -> list[dict]:
    """Events over a few sites, days (around UTC midnight) and users, with resends."""
    events = []
    for i in range(n):
        if events and rng.random() < 0.15:
            events.append(dict(rng.choice(events)))  # a resend: same event_id and content
            continue
        ts = DAY0 + timedelta(
            hours=rng.choice([-1, 0, 1, 23, 24, 25, 47]), minutes=rng.randint(0, 59)
        )
        offset = timedelta(hours=rng.choice([0, 5, -8]))
        events.append(
            {
                "event_id": f"e{i}",
                "site_id": rng.choice(["a", "b", "c"]),
                "event_type": rng.choice(["page_view", "page_view", "click", "signup"]),
                "path": rng.choice(["/", "/a", "/b", "/ü", "/B"]),
                "user_id": f"u{rng.randint(0, 30)}",
                "timestamp": ts.astimezone(timezone(offset)).isoformat(),
            }
        )
    return events


def to_row(e: dict) -> bytes:
    # Client JSON as is, offsets included: the statement's own reading of timestamps is tested
    # here (the worker hands it events normalised to UTC).
    return stored_event(json.dumps(e).encode(), int(time.time() * 1000))


async def stored_stats(store: EventStore, keys) -> dict:
    found = {}
    for site, day in keys:
        s = await store.totals(site, day, day, 1000)
        found[(site, day)] = {
            "total_views": s.views,
            "unique_users": s.unique_users,
            "top_paths": [{"path": p, "views": v} for p, v in s.top_paths],
        }
    return found


@pytest.mark.parametrize("seed", range(5))
async def test_fold_equals_a_naive_recount(store: EventStore, seed: int) -> None:
    rng = random.Random(seed)
    events = random_events(rng, 1500)
    batches, i = [], 0
    while i < len(events):
        size = rng.randint(1, 200)
        batches.append([to_row(e) for e in events[i : i + size]])
        i += size
    # Two concurrent "workers" taking alternate batches, plus a full redelivery of one batch.
    batches.append(batches[rng.randrange(len(batches))])
    lanes = [batches[0::2], batches[1::2]]

    async def lane(work: list[list[bytes]]) -> int:
        return sum([await store.save_batch(b) for b in work])

    inserted = sum(await asyncio.gather(*(lane(w) for w in lanes)))
    expected = expected_stats(events)
    assert inserted == len({e["event_id"] for e in events})
    assert await stored_stats(store, expected) == expected


@pytest.mark.parametrize(
    "bad", [{"user_id": "nul\u0000"}, {"timestamp": "yesterday-ish"}, {"event_id": None}]
)
async def test_a_batch_is_atomic(store: EventStore, db: asyncpg.Connection, bad: dict) -> None:
    good = {
        "event_id": "ok",
        "site_id": "s",
        "event_type": "page_view",
        "path": "/",
        "user_id": "u",
        "timestamp": DAY0.isoformat(),
        "properties": {"plan": "pro", "n": 3},
    }
    # SQLSTATE classes 22 and 23: what the worker isolates and dead-letters.
    refused = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
    with pytest.raises(refused):
        await store.save_batch([to_row(good), to_row({**good, "event_id": "bad", **bad})])
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert await db.fetchval("SELECT count(*) FROM daily_site_stats") == 0


async def test_a_raw_row_holds_the_event_exactly(store: EventStore, db: asyncpg.Connection) -> None:
    event = {
        "event_id": "exact",
        "site_id": "s",
        "event_type": "signup",
        "path": "/ü?q=1",
        "user_id": "u",
        "timestamp": "2026-03-01T23:30:00.123456-08:00",
        "referrer": "https://example.com/",
        "properties": {"plan": "pro", "seats": 3, "trial": False, "ratio": 0.5, "none": None},
    }
    await store.save_batch([stored_event(json.dumps(event).encode(), 1_772_409_600_007)])
    row = await db.fetchrow("SELECT * FROM events")
    assert row["occurred_at"] == datetime(2026, 3, 2, 7, 30, 0, 123456, tzinfo=UTC)
    assert row["date"] == date(2026, 3, 2)  # the UTC day, not the client's
    assert row["received_at"] == datetime(2026, 3, 2, 0, 0, 0, 7000, tzinfo=UTC)
    assert json.loads(row["properties"]) == event["properties"]
    assert (row["path"], row["referrer"]) == ("/ü?q=1", event["referrer"])


async def test_an_unknown_site_or_day_is_zeros(store: EventStore) -> None:
    s = await store.totals("nobody", date(2026, 1, 1), date(2026, 1, 31), 10)
    assert (s.views, s.unique_users, s.top_paths) == (0, 0, [])


async def test_top_paths_rank_by_views_then_path_in_byte_order(store: EventStore) -> None:
    rows = []
    for i, path in enumerate(["/b", "/a", "/B", "/a", "/é", "/b", "/c"]):
        fields = {"event_id": f"x{i}", "site_id": "s", "event_type": "page_view", "path": path}
        rows.append(to_row({**fields, "user_id": "u", "timestamp": DAY0.isoformat()}))
    await store.save_batch(rows)
    s = await store.totals("s", DAY0.date(), DAY0.date(), 3)
    assert s.top_paths == [("/a", 2), ("/b", 2), ("/B", 1)]
