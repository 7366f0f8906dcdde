"""PostgreSQL access: the pool, the worker's batch statement and the reporting query.

All SQL text lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg
import structlog
from opentelemetry.trace import SpanKind

from queueflow.core.tracing import Tracing

log = structlog.get_logger(__name__)

# One statement, so one transaction: insert raw rows deduplicated on (site_id, event_id), then
# fold only the rows actually inserted into the aggregates. Every write is ordered by its key
# so that concurrent workers take row locks in the same order and cannot deadlock each other.
# The batch arrives as one JSON array of the events as the stream holds them (see
# stored_event): PostgreSQL reads it faster than asyncpg encodes nine arrays of Python values,
# and the worker builds no row objects (bench/README.md, "Findings").
SAVE_BATCH = """
WITH batch AS (
    SELECT event_id, site_id, event_type, path, user_id, "timestamp" AS occurred_at,
           'epoch'::timestamptz + received_ms * interval '1 millisecond' AS received_at,
           referrer, properties
    FROM json_to_recordset($1::json) AS b(
        event_id text, site_id text, event_type text, path text, user_id text,
        "timestamp" timestamptz, received_ms bigint, referrer text, properties jsonb)
),
inserted AS (
    INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at,
                        received_at, referrer, properties)
    SELECT event_id, site_id, event_type, path, user_id, occurred_at, received_at,
           referrer, properties
    FROM batch ORDER BY site_id, event_id
    ON CONFLICT (site_id, event_id) DO NOTHING
    RETURNING site_id, date, event_type, path, user_id
),
new_users AS (
    INSERT INTO daily_site_users (site_id, date, user_id)
    SELECT DISTINCT site_id, date, user_id FROM inserted ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    RETURNING site_id, date
),
path_views AS (
    INSERT INTO daily_site_path_counts AS c (site_id, date, path, views)
    SELECT site_id, date, path, count(*) FROM inserted WHERE event_type = 'page_view'
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (site_id, date, path) DO UPDATE SET views = c.views + excluded.views
),
day_totals AS (
    SELECT site_id, date, sum(views) AS views, sum(users) AS users FROM (
        SELECT site_id, date, count(*) FILTER (WHERE event_type = 'page_view') AS views,
               0 AS users
        FROM inserted GROUP BY 1, 2
        UNION ALL
        SELECT site_id, date, 0, count(*) FROM new_users GROUP BY 1, 2
    ) t GROUP BY 1, 2
),
day_stats AS (
    INSERT INTO daily_site_stats AS s (site_id, date, total_views, unique_users)
    SELECT site_id, date, views, users FROM day_totals ORDER BY 1, 2
    ON CONFLICT (site_id, date) DO UPDATE
        SET total_views = s.total_views + excluded.total_views,
            unique_users = s.unique_users + excluded.unique_users
)
SELECT count(*) FROM inserted
"""

# Ties rank by path in byte order (COLLATE "C"), whatever the database's default collation.
DAILY_STATS = """
SELECT coalesce(s.total_views, 0) AS total_views,
       coalesce(s.unique_users, 0) AS unique_users,
       array(SELECT p.path FROM daily_site_path_counts p
             WHERE p.site_id = $1 AND p.date = $2
             ORDER BY p.views DESC, p.path COLLATE "C" LIMIT $3) AS paths,
       array(SELECT p.views FROM daily_site_path_counts p
             WHERE p.site_id = $1 AND p.date = $2
             ORDER BY p.views DESC, p.path COLLATE "C" LIMIT $3) AS views
FROM (SELECT 1) AS one
LEFT JOIN daily_site_stats s ON s.site_id = $1 AND s.date = $2
"""


# `queueflow verify`: the aggregates recomputed from the raw events, compared with the stored
# ones. $1/$2 bound the UTC dates, $3 is a site or NULL for all sites.
RANGE = "date BETWEEN $1 AND $2 AND ($3::text IS NULL OR site_id = $3)"
STATS_FROM_EVENTS = f"""
SELECT site_id, date, count(*) FILTER (WHERE event_type = 'page_view') AS total_views,
       count(DISTINCT user_id) AS unique_users
FROM events WHERE {RANGE} GROUP BY site_id, date
"""
PATHS_FROM_EVENTS = f"""
SELECT site_id, date, path, count(*) AS views
FROM events WHERE event_type = 'page_view' AND {RANGE} GROUP BY site_id, date, path
"""
USERS_FROM_EVENTS = f"SELECT DISTINCT site_id, date, user_id FROM events WHERE {RANGE}"
STATS_DIFFERENCES = f"""
SELECT site_id, date, e.total_views AS expected_views, a.total_views AS stored_views,
       e.unique_users AS expected_users, a.unique_users AS stored_users
FROM ({STATS_FROM_EVENTS}) e
FULL JOIN (SELECT * FROM daily_site_stats WHERE {RANGE}) a USING (site_id, date)
WHERE e.total_views IS DISTINCT FROM a.total_views
   OR e.unique_users IS DISTINCT FROM a.unique_users
ORDER BY site_id, date
"""
PATH_DIFFERENCES = f"""
SELECT site_id, date, path, e.views AS expected_views, a.views AS stored_views
FROM ({PATHS_FROM_EVENTS}) e
FULL JOIN (SELECT * FROM daily_site_path_counts WHERE {RANGE}) a USING (site_id, date, path)
WHERE e.views IS DISTINCT FROM a.views
ORDER BY site_id, date, path
"""
USER_DIFFERENCES = f"""
SELECT count(*) FROM ({USERS_FROM_EVENTS}) e
FULL JOIN (SELECT * FROM daily_site_users WHERE {RANGE}) a USING (site_id, date, user_id)
WHERE e.user_id IS NULL OR a.user_id IS NULL
"""
CHECKED_DAYS = f"SELECT count(*) FROM ({STATS_FROM_EVENTS}) e"
# Rebuilding takes a lock that conflicts with the workers' upserts, so no batch folds into
# a site-day while it is rebuilt; batches committed before the lock are in the recount,
# batches after it fold into the rebuilt figures.
REBUILD = [
    "LOCK TABLE daily_site_stats, daily_site_path_counts, daily_site_users "
    "IN SHARE ROW EXCLUSIVE MODE",
    f"DELETE FROM daily_site_users WHERE {RANGE}",
    f"INSERT INTO daily_site_users (site_id, date, user_id) {USERS_FROM_EVENTS}",
    f"DELETE FROM daily_site_path_counts WHERE {RANGE}",
    f"INSERT INTO daily_site_path_counts (site_id, date, path, views) {PATHS_FROM_EVENTS}",
    f"DELETE FROM daily_site_stats WHERE {RANGE}",
    f"INSERT INTO daily_site_stats (site_id, date, total_views, unique_users) {STATS_FROM_EVENTS}",
]


def stored_event(event_json: bytes, received_ms: int) -> bytes:
    """An event as SAVE_BATCH reads it: the validated event's JSON object (as encode_event
    writes it: event_id set, timestamp in UTC) with received_ms, the time Redis accepted it."""
    if not event_json.startswith(b"{"):
        raise ValueError("an event is a JSON object")
    return b'{"received_ms":%d,%b' % (received_ms, event_json[1:])


def batch_document(events: Sequence[bytes]) -> str:
    """SAVE_BATCH's parameter: the batch's stored_event()s as one JSON array."""
    return (b"[%b]" % b",".join(events)).decode()


@dataclass(frozen=True, slots=True)
class Audit:
    site_days: int  # site-days that have raw events in the range
    stats: list[dict]  # daily_site_stats rows that differ from the recount
    paths: list[dict]  # daily_site_path_counts rows that differ
    user_rows: int  # rows of daily_site_users missing or extra

    @property
    def clean(self) -> bool:
        return not self.stats and not self.paths and not self.user_rows


@dataclass(frozen=True, slots=True)
class DailyStats:
    total_views: int
    unique_users: int
    top_paths: list[tuple[str, int]]


async def create_pool(dsn: str, *, max_size: int) -> asyncpg.Pool:
    """A pool that connects on first use, so a service starts (and reports not ready) while
    PostgreSQL is down instead of crash-looping."""
    return await asyncpg.create_pool(dsn, min_size=0, max_size=max_size, command_timeout=60)


async def connect(dsn: str, *, attempts: int = 15, delay_s: float = 1.0) -> asyncpg.Connection:
    """Connect, waiting a bounded number of tries for PostgreSQL to come up, then fail loudly."""
    for attempt in range(1, attempts + 1):
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError) as exc:
            if attempt == attempts:
                raise
            log.warning("database not reachable", error=str(exc), tries_left=attempts - attempt)
            await asyncio.sleep(delay_s)
    raise AssertionError("unreachable")


class EventStore:
    def __init__(self, pool: asyncpg.Pool, tracing: Tracing | None = None) -> None:
        self.pool = pool
        self.tracing = tracing or Tracing.off()

    @contextlib.asynccontextmanager
    async def _connection(self, operation: str, table: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one statement, traced as a database client span."""
        span = self.tracing.tracer.start_as_current_span(
            f"{operation} {table}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": operation,
                "db.collection.name": table,
            },
        )
        with span:
            async with self.pool.acquire() as conn:
                try:
                    yield conn
                except (asyncpg.InterfaceError, asyncpg.InternalClientError):
                    # A connection cut mid-statement can leave asyncpg's protocol in a state the
                    # pool would hand out again; drop it so the next try gets a fresh one.
                    conn.terminate()
                    raise

    async def save_batch(self, events: Sequence[bytes]) -> int:
        """Store a batch of stored_event()s atomically; returns how many were new (the rest
        were duplicates)."""
        async with self._connection("INSERT", "events") as conn:
            return await conn.fetchval(SAVE_BATCH, batch_document(events))

    async def daily_stats(self, site_id: str, day: date, limit: int) -> DailyStats:
        async with self._connection("SELECT", "daily_site_stats") as conn:
            row = await conn.fetchrow(DAILY_STATS, site_id, day, limit)
        return DailyStats(
            total_views=row["total_views"],
            unique_users=row["unique_users"],
            top_paths=list(zip(row["paths"], row["views"], strict=True)),
        )

    async def audit(self, first: date, last: date, site_id: str | None) -> Audit:
        """Compare stored aggregates with a recount from the raw events, in one snapshot."""
        args = (first, last, site_id)
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return Audit(
                site_days=await conn.fetchval(CHECKED_DAYS, *args),
                stats=[dict(r) for r in await conn.fetch(STATS_DIFFERENCES, *args)],
                paths=[dict(r) for r in await conn.fetch(PATH_DIFFERENCES, *args)],
                user_rows=await conn.fetchval(USER_DIFFERENCES, *args),
            )

    async def rebuild_aggregates(self, first: date, last: date, site_id: str | None) -> None:
        """Rewrite the aggregates of the range from the raw events, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            for statement in REBUILD:
                await conn.execute(
                    statement, *(() if "$1" not in statement else (first, last, site_id))
                )

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
