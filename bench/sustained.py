"""Step `sustained`: the worker's batch statement on tables that already hold
`--sustained-events` raw events (50,000,000), against its rate on empty tables in the same
run. The stored events are made by `generate_series`, not through the statement: the bench's
own sites, the last 30 days, and random event ids (as a tracker's are: a fresh random UUID
per event), so the batches' inserts land all over the primary key, as they do in
production; the batches' ids are random too. Each rate is the median of --runs runs of
fresh events. Also the
size of the raw events table and of each of its indexes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from bench.context import Bench
from bench.figures import Result
from bench.limits import batch_documents, sql_rate
from bench.report import median
from queueflow.core.store import ALL_AGGREGATES

FILL_CHUNK = 1_000_000
AGGREGATES = f"site_users, {ALL_AGGREGATES}"
FILL = """
INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at, received_at)
SELECT md5(random()::text || i), 'site-' || (1 + i % 5), 'page_view', '/page/' || (i % 50),
       'user-' || (i % 200000), t, t
FROM generate_series(1, $1::int) AS i,
     LATERAL (SELECT now() - random() * interval '30 days' + i * interval '0' AS t) AS ts
"""
SIZES = """
SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes
FROM pg_class c WHERE c.oid = 'events'::regclass
   OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'events'::regclass)
"""


@dataclass(frozen=True)
class SustainedResult(Result):
    NEST = "sustained"

    stored_events: int
    fill_s: float
    empty_events_per_s: float
    filled_events_per_s: float
    filled_vs_empty: float
    sizes_mb: dict[str, float]  # the events table and each index


def run(bench: Bench) -> SustainedResult:
    runs = [batch_documents(seed=100 + i, random_ids=True) for i in range(bench.args.runs)]
    empty = []
    for documents in runs:
        bench.reset()
        empty.append(asyncio.run(sql_rate(bench.database_url, documents, bench.args.duration)))
    bench.reset()
    started = time.monotonic()
    asyncio.run(_fill(bench.database_url, bench.args.sustained_events))
    fill_s = time.monotonic() - started
    # Fresh events each run, into aggregates as empty as the empty-table runs had: only the
    # stored raw events differ.
    filled = []
    for i in range(bench.args.runs):
        documents = batch_documents(seed=200 + i, random_ids=True)
        asyncio.run(bench.sql(f"TRUNCATE {AGGREGATES}"))
        asyncio.run(bench.sql("CHECKPOINT"))
        filled.append(asyncio.run(sql_rate(bench.database_url, documents, bench.args.duration)))
    sizes = asyncio.run(_sizes(bench.database_url))
    bench.reset()
    return SustainedResult(
        stored_events=bench.args.sustained_events,
        fill_s=round(fill_s, 1),
        empty_events_per_s=round(median(empty)),
        filled_events_per_s=round(median(filled)),
        filled_vs_empty=round(median(filled) / median(empty), 3),
        sizes_mb=sizes,
    )


async def _fill(database_url: str, count: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for start in range(0, count, FILL_CHUNK):
            await conn.execute(FILL, min(FILL_CHUNK, count - start))
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


async def _sizes(database_url: str) -> dict[str, float]:
    conn = await asyncpg.connect(database_url)
    try:
        return {r["name"]: round(r["bytes"] / 2**20, 1) for r in await conn.fetch(SIZES)}
    finally:
        await conn.close()
