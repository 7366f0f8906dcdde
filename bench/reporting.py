"""Step `reporting`: every reporting route's latency over a month of data, and what the range
structures cost in storage.

The dataset is built in PostgreSQL, not through ingest: `--reporting-days` days (31) of
`--reporting-events` events a day (1,000,000), spread Zipf-like over 100 sites (site k gets
a share proportional to 1/k), over each site's 500 paths and its users (users recur across
days), 80% page views, half with one of 40 referrers; the last day ends now. The raw events
come from `generate_series`; the aggregates from `queueflow verify --repair`'s own rebuild
(EventStore.rebuild_aggregates), the code that recounts them from raw events. Then
`queueflow reporting` answers each route for the biggest site and a median one (31-day
ranges; the hour series over 7 days) `--reporting-requests` times in turn; p50 and p99 per
route and site.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from bench.context import Bench
from bench.figures import Result
from bench.report import median
from queueflow.core.store import ADD_DAY

SITES = 100
BIGGEST, MEDIAN = "site-001", "site-050"
NEW_TABLES = (
    "site_users",
    "sites",
    "hourly_site_stats",
    "daily_value_counts",
    "daily_user_bits",
    "hourly_user_bits",
    "daily_value_user_bits",
)
# One day of events. Zipf-like by inverse transform: floor(n ** random()) is 1..n with
# P(k) proportional to about 1/k. A site has one user for every two of its daily events (at
# least 50); drawn Zipf-like too, so many come back on other days and many do not.
ONE_DAY = f"""
INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at, received_at,
                    referrer)
SELECT 'b' || $1::int || '-' || i, s.site_id,
       CASE WHEN random() < 0.8 THEN 'page_view' ELSE 'signup' END,
       '/page/' || floor(power(500, random()))::int,
       'user-' || floor(power(greatest(50, s.share * $2::int / 2), random()))::int,
       t, t,
       CASE WHEN random() < 0.5 THEN NULL
            ELSE 'https://ref' || floor(power(40, random()))::int || '.example/' END
FROM generate_series(1, $2::int) AS i,
     LATERAL (SELECT floor(power({SITES}, random() + i * 0))::int AS k) AS pick,
     LATERAL (SELECT format('site-%s', lpad(pick.k::text, 3, '0')) AS site_id,
                     1.0 / (pick.k * {sum(1 / k for k in range(1, SITES + 1))}) AS share) AS s,
     LATERAL (SELECT $3::timestamptz + random() * ($4::timestamptz - $3::timestamptz) AS t) AS ts
"""


@dataclass(frozen=True)
class ReportingResult(Result):
    NEST = "reporting"

    events: int
    build_s: dict[str, float]  # raw events, aggregates
    storage_mb_per_million_events: dict[str, float]  # table (with indexes) -> MB
    latency_ms: dict[str, dict[str, dict[str, float]]]  # route -> site -> p50, p99


def run(bench: Bench) -> ReportingResult:
    bench.reset()
    days, per_day = bench.args.reporting_days, bench.args.reporting_events
    now = datetime.now(UTC).replace(microsecond=0)
    started = time.monotonic()
    asyncio.run(_raw_events(bench.database_url, days, per_day, now))
    raw_s = time.monotonic() - started
    started = time.monotonic()
    asyncio.run(_aggregates(bench.database_url, now - timedelta(days=days), now))
    aggregates_s = time.monotonic() - started
    storage = asyncio.run(_storage(bench.database_url, days * per_day))
    latency = {}
    with bench.service("reporting", quiet=True) as service:
        for route, params in _routes(now).items():
            latency[route] = {
                site: _latency(service.url, route, {"site_id": site, **params}, bench)
                for site in (BIGGEST, MEDIAN)
            }
        latency["/sites"] = {"all": _latency(service.url, "/sites", {}, bench)}
    bench.reset()
    return ReportingResult(
        events=days * per_day,
        build_s={"raw_events": round(raw_s, 1), "aggregates": round(aggregates_s, 1)},
        storage_mb_per_million_events=storage,
        latency_ms=latency,
    )


async def _raw_events(database_url: str, days: int, per_day: int, now: datetime) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # The raw events' days need their partitions (workers add only the week ahead).
        first = (now - timedelta(days=days)).astimezone(UTC).date()
        for day in range((now.astimezone(UTC).date() - first).days + 1):
            await conn.fetchval(ADD_DAY, first + timedelta(days=day))
        for day in range(days):
            end = now - timedelta(days=day)
            await conn.execute(ONE_DAY, day, per_day, end - timedelta(days=1), end)
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


async def _aggregates(database_url: str, since: datetime, until: datetime) -> None:
    from queueflow.core.store import EventStore, create_pool

    pool = await create_pool(database_url, max_size=1, command_timeout=None)
    try:
        day = since.date()
        while day <= until.date():  # a day at a time: bounded memory, as fast
            await EventStore(pool).rebuild_aggregates(day, day, None)
            day += timedelta(days=1)
        async with pool.acquire() as conn:
            for table in (*NEW_TABLES, "daily_site_stats"):
                await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await pool.close()


async def _storage(database_url: str, events: int) -> dict[str, float]:
    conn = await asyncpg.connect(database_url)
    try:
        sizes = {
            table: await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
            for table in ("events", "daily_site_stats", *NEW_TABLES)
        }
    finally:
        await conn.close()
    return {table: round(size / 2**20 / (events / 1e6), 2) for table, size in sizes.items()}


def _routes(now: datetime) -> dict[str, dict[str, str]]:
    last = now.date()
    month = {"from": str(last - timedelta(days=30)), "to": str(last)}
    week = {"from": str(last - timedelta(days=6)), "to": str(last)}
    return {
        "/stats": month,
        "/stats/timeseries?interval=day": {**month, "interval": "day"},
        "/stats/timeseries?interval=hour": {**week, "interval": "hour"},
        "/stats/breakdown?by=path": {**month, "by": "path"},
        "/stats/breakdown?by=referrer": {**month, "by": "referrer"},
        "/stats/breakdown?by=event_type": {**month, "by": "event_type"},
        "/stats/realtime": {"minutes": "5"},
    }


def _latency(url: str, route: str, params: dict[str, str], bench: Bench) -> dict[str, float]:
    path = route.split("?")[0]
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(bench.args.reporting_requests + 5):
            started = time.perf_counter()
            response = client.get(path, params=params)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if i >= 5:  # the first few warm the caches and the connection pool
                times.append(elapsed)
    times.sort()
    return {
        "p50": round(median(times), 1),
        "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
    }
