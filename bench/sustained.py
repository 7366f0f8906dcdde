"""Step `sustained`: the worker's batch statement on tables that already hold
`--sustained-events` raw events (50,000,000), against its rate on empty tables in the same
run, then the time retention takes to remove a day. The stored events are made by
`generate_series`, not through the statement: the bench's own sites, the last 30 days, a
partition per day, with time-ordered ids (UUIDv7, as ingest assigns and the tracker sends).
Batches are measured twice: with such ids, and with random ones (UUIDv4, as a client of the
HTTP API may choose), whose dedupe keys land all over event_ids. Each rate is the median of
--runs runs of fresh events. Also the size of the events' partitions, their keys, and
event_ids."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.context import Bench
from bench.figures import Result
from bench.limits import batch_documents, sql_rate
from bench.report import median
from queueflow.core.store import ALL_AGGREGATES, EventStore, create_pool

FILL_CHUNK = 1_000_000
DAYS = 30
AGGREGATES = f"site_users, {ALL_AGGREGATES}"
# A UUIDv7 of the event's own time: 48 bits of milliseconds, then random digits.
FILL = """
WITH made AS (
    SELECT 'site-' || (1 + i % 5) AS site_id, i, t,
           lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') AS ms,
           md5(random()::text || i) AS r
    FROM generate_series(1, $1::int) AS i,
         LATERAL (SELECT now() - random() * interval '30 days' + i * interval '0' AS t) AS ts
),
identified AS (
    SELECT *, substr(ms, 1, 8) || '-' || substr(ms, 9, 4) || '-7' || substr(r, 1, 3) || '-8'
              || substr(r, 4, 3) || '-' || substr(r, 7, 12) AS event_id
    FROM made
),
ids AS (
    INSERT INTO event_ids (site_id, event_id, date)
    SELECT site_id, event_id, (t AT TIME ZONE 'UTC')::date FROM identified
)
INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at, received_at)
SELECT event_id, site_id, 'page_view', '/page/' || (i % 50), 'user-' || (i % 200000), t, t
FROM identified
"""
# Every partition of events and each of their keys, summed; event_ids and its key.
SIZES = """
SELECT 'events' AS name, sum(pg_relation_size(inhrelid)) AS bytes
FROM pg_inherits WHERE inhparent = 'events'::regclass
UNION ALL
SELECT 'events keys', sum(pg_relation_size(i.indexrelid))
FROM pg_inherits p JOIN pg_index i ON i.indrelid = p.inhrelid
WHERE p.inhparent = 'events'::regclass
UNION ALL SELECT 'event_ids', pg_relation_size('event_ids')
UNION ALL SELECT 'event_ids key', pg_relation_size('event_ids_pkey')
"""
OLDEST_DAY_EVENTS = "SELECT count(*) FROM events WHERE date = $1"


@dataclass(frozen=True)
class SustainedResult(Result):
    NEST = "sustained"

    stored_events: int
    fill_s: float
    empty_events_per_s: float
    filled_events_per_s: float
    filled_vs_empty: float  # time-ordered ids
    random_empty_events_per_s: float
    random_filled_events_per_s: float
    random_filled_vs_empty: float  # random ids
    sizes_mb: dict[str, float]
    retention_day_events: int
    retention_day_s: float  # removing the oldest day: its ids, then its partition


def run(bench: Bench) -> SustainedResult:
    kinds = {"ordered": False, "random": True}
    empty: dict[str, list[float]] = {kind: [] for kind in kinds}
    filled: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(bench.args.runs):
        for kind, random_ids in kinds.items():
            documents = batch_documents(seed=100 + i, random_ids=random_ids)
            bench.reset()
            rate = asyncio.run(sql_rate(bench.database_url, documents, bench.args.duration))
            empty[kind].append(rate)
    bench.reset()
    started = time.monotonic()
    asyncio.run(_fill(bench.database_url, bench.args.sustained_events))
    fill_s = time.monotonic() - started
    # Fresh events each run, into aggregates as empty as the empty-table runs had: only the
    # stored raw events differ.
    for i in range(bench.args.runs):
        for kind, random_ids in kinds.items():
            documents = batch_documents(seed=200 + i, random_ids=random_ids)
            asyncio.run(bench.sql(f"TRUNCATE {AGGREGATES}"))
            asyncio.run(bench.sql("CHECKPOINT"))
            rate = asyncio.run(sql_rate(bench.database_url, documents, bench.args.duration))
            filled[kind].append(rate)
    sizes = asyncio.run(_sizes(bench.database_url))
    day_events, day_s = asyncio.run(_expire_oldest_day(bench.database_url))
    bench.reset()
    rates = {kind: (median(empty[kind]), median(filled[kind])) for kind in kinds}
    return SustainedResult(
        stored_events=bench.args.sustained_events,
        fill_s=round(fill_s, 1),
        empty_events_per_s=round(rates["ordered"][0]),
        filled_events_per_s=round(rates["ordered"][1]),
        filled_vs_empty=round(rates["ordered"][1] / rates["ordered"][0], 3),
        random_empty_events_per_s=round(rates["random"][0]),
        random_filled_events_per_s=round(rates["random"][1]),
        random_filled_vs_empty=round(rates["random"][1] / rates["random"][0], 3),
        sizes_mb=sizes,
        retention_day_events=day_events,
        retention_day_s=round(day_s, 2),
    )


async def _fill(database_url: str, count: int) -> None:
    pool = await create_pool(database_url, max_size=1, command_timeout=None)
    try:
        today = datetime.now(UTC).date()
        await EventStore(pool).add_event_days([today - timedelta(days=d) for d in range(DAYS + 1)])
        async with pool.acquire() as conn:
            for start in range(0, count, FILL_CHUNK):
                await conn.execute(FILL, min(FILL_CHUNK, count - start))
            await conn.execute("VACUUM ANALYZE events")
            await conn.execute("VACUUM ANALYZE event_ids")
    finally:
        await pool.close()


async def _sizes(database_url: str) -> dict[str, float]:
    conn = await asyncpg.connect(database_url)
    try:
        return {r["name"]: round(float(r["bytes"]) / 2**20, 1) for r in await conn.fetch(SIZES)}
    finally:
        await conn.close()


async def _expire_oldest_day(database_url: str) -> tuple[int, float]:
    """What `queueflow retention` does for one day, timed: the oldest full day's."""
    pool = await create_pool(database_url, max_size=1, command_timeout=None)
    try:
        store = EventStore(pool)
        oldest = datetime.now(UTC).date() - timedelta(days=DAYS - 1)  # the one before is partial
        async with pool.acquire() as conn:
            events = await conn.fetchval(OLDEST_DAY_EVENTS, oldest)
        started = time.monotonic()
        await store.expire_event_day(oldest)
        return events, time.monotonic() - started
    finally:
        await pool.close()
