"""PostgreSQL access: the pool, the worker's batch statement and the reporting query.

All SQL text lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import asyncpg
import structlog
from opentelemetry.trace import SpanKind

from queueflow.core.tracing import Tracing

log = structlog.get_logger(__name__)


# The batch itself, one statement, so one transaction: record each (site_id, event_id) in
# event_ids, insert the raw rows of those it did not hold yet (event_ids is the dedupe key:
# the partitioned events table cannot hold one without the day), then fold only the rows
# actually inserted into every aggregate, so a
# committed batch is visible to every route at once. Every write is ordered by its key so that
# concurrent workers take row locks in the same order and cannot deadlock each other. A bitmap
# row is written (and locked) only when the batch adds a user to it: bits are only ever set,
# so one that the statement's snapshot already holds is still set when it commits.
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
-- A resend in the same batch: one of the two is stored.
distinct_batch AS (SELECT DISTINCT ON (site_id, event_id) * FROM batch ORDER BY site_id, event_id),
fresh AS (
    INSERT INTO event_ids (site_id, event_id, date)
    SELECT site_id, event_id, (occurred_at AT TIME ZONE 'UTC')::date FROM distinct_batch
    ORDER BY site_id, event_id
    ON CONFLICT (site_id, event_id) DO NOTHING
    RETURNING site_id, event_id
),
inserted AS (
    INSERT INTO events (event_id, site_id, event_type, path, user_id, occurred_at,
                        received_at, referrer, properties)
    SELECT event_id, site_id, event_type, path, user_id, occurred_at, received_at,
           referrer, properties
    FROM distinct_batch WHERE (site_id, event_id) IN (SELECT site_id, event_id FROM fresh)
    RETURNING site_id, date, date_trunc('hour', occurred_at, 'UTC') AS hour, event_type, path,
              referrer, user_id, event_type = 'page_view' AS viewed
),
users AS (SELECT DISTINCT site_id, user_id FROM inserted),
known AS (SELECT u.* FROM site_users u JOIN users USING (site_id, user_id)),
-- A user that another worker numbers at the same moment conflicts: DO UPDATE waits for that
-- commit and returns the number it gave (DO NOTHING would return no row).
new_users AS (
    INSERT INTO site_users AS u (site_id, user_id)
    SELECT site_id, user_id FROM users LEFT JOIN known k USING (site_id, user_id)
    WHERE k.user_number IS NULL
    ORDER BY 1, 2
    ON CONFLICT (site_id, user_id) DO UPDATE SET user_number = u.user_number
    RETURNING site_id, user_id, user_number
),
numbered AS (
    SELECT i.*, n.user_number >> 10 AS chunk,
           B'1'::bit(1024) >> (n.user_number & 1023)::int AS bit
    FROM inserted i
    JOIN (SELECT * FROM known UNION ALL SELECT * FROM new_users) n USING (site_id, user_id)
),
day_stats AS (
    INSERT INTO daily_site_stats AS s (site_id, date, total_views)
    SELECT site_id, date, count(*) FILTER (WHERE viewed) FROM inserted
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (site_id, date) DO UPDATE SET total_views = s.total_views + excluded.total_views
),
hour_stats AS (
    INSERT INTO hourly_site_stats AS s (site_id, hour, views)
    SELECT site_id, hour, count(*) FILTER (WHERE viewed) FROM inserted
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (site_id, hour) DO UPDATE SET views = s.views + excluded.views
),
site_stats AS (
    INSERT INTO sites AS s (site_id, first_date, last_date, total_views)
    SELECT site_id, min(date), max(date), count(*) FILTER (WHERE viewed) FROM inserted
    GROUP BY 1 ORDER BY 1
    ON CONFLICT (site_id) DO UPDATE
        SET first_date = least(s.first_date, excluded.first_date),
            last_date = greatest(s.last_date, excluded.last_date),
            total_views = s.total_views + excluded.total_views
),
value_counts AS (
    INSERT INTO daily_value_counts AS c (site_id, dimension, date, value, events)
    SELECT site_id, dimension, date, value, count(*) FROM (
        SELECT site_id, 'path' AS dimension, date, path AS value FROM inserted WHERE viewed
        UNION ALL SELECT site_id, 'referrer', date, referrer FROM inserted WHERE viewed
        UNION ALL SELECT site_id, 'event_type', date, event_type FROM inserted
    ) v GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (site_id, dimension, date, (value IS NULL), coalesce(value, ''))
        DO UPDATE SET events = c.events + excluded.events
),
day_users AS (
    INSERT INTO daily_user_bits AS b (site_id, date, chunk, users)
    SELECT n.* FROM (
        SELECT site_id, date, chunk, bit_or(bit) AS users FROM numbered GROUP BY 1, 2, 3
    ) n LEFT JOIN daily_user_bits o USING (site_id, date, chunk)
    WHERE o.users IS NULL OR o.users | n.users <> o.users
    ORDER BY 1, 2, 3
    ON CONFLICT (site_id, date, chunk) DO UPDATE SET users = b.users | excluded.users
),
hour_users AS (
    INSERT INTO hourly_user_bits AS b (site_id, hour, chunk, users)
    SELECT n.* FROM (
        SELECT site_id, hour, chunk, bit_or(bit) AS users FROM numbered GROUP BY 1, 2, 3
    ) n LEFT JOIN hourly_user_bits o USING (site_id, hour, chunk)
    WHERE o.users IS NULL OR o.users | n.users <> o.users
    ORDER BY 1, 2, 3
    ON CONFLICT (site_id, hour, chunk) DO UPDATE SET users = b.users | excluded.users
),
value_users AS (
    INSERT INTO daily_value_user_bits AS b (site_id, dimension, value, date, chunk, users)
    SELECT n.* FROM (
        SELECT site_id, dimension, value, date, chunk, bit_or(bit) AS users FROM (
            SELECT site_id, 'path' AS dimension, path AS value, date, chunk, bit
            FROM numbered WHERE viewed
            UNION ALL
            SELECT site_id, 'referrer', referrer, date, chunk, bit FROM numbered WHERE viewed
            UNION ALL
            SELECT site_id, 'event_type', event_type, date, chunk, bit FROM numbered
        ) v GROUP BY 1, 2, 3, 4, 5
    ) n LEFT JOIN daily_value_user_bits o
        ON o.site_id = n.site_id AND o.dimension = n.dimension
       AND (o.value IS NULL) = (n.value IS NULL) AND coalesce(o.value, '') = coalesce(n.value, '')
       AND o.date = n.date AND o.chunk = n.chunk
    WHERE o.users IS NULL OR o.users | n.users <> o.users
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (site_id, dimension, (value IS NULL), coalesce(value, ''), date, chunk)
        DO UPDATE SET users = b.users | excluded.users
)
SELECT count(*) FROM inserted
"""

# Reporting. $1 is the site, $2 and $3 the range's first and last UTC day (inclusive). A
# range's users are the OR of its days' bitmaps, chunk by chunk; a bucket's are its own.
SITE_DAYS = "site_id = $1 AND date BETWEEN $2 AND $3"
SITE_HOURS = (
    "site_id = $1 AND hour >= $2::date::timestamp AT TIME ZONE 'UTC' "
    "AND hour < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'"
)
USERS_OVER_DAYS = f"""
SELECT coalesce(sum(bit_count(users)), 0)::bigint FROM (
    SELECT bit_or(users) AS users FROM daily_user_bits WHERE {SITE_DAYS} GROUP BY chunk
) u
"""
RANGE_TOTALS = f"""
SELECT (SELECT coalesce(sum(total_views), 0)::bigint FROM daily_site_stats WHERE {SITE_DAYS})
           AS views,
       ({USERS_OVER_DAYS}) AS users
"""
# $4 the dimension, $5 how many rows. Ties rank by value in byte order (COLLATE "C"), NULL last.
TOP_VALUES = f"""
SELECT value, sum(events)::bigint AS events FROM daily_value_counts
WHERE {SITE_DAYS} AND dimension = $4
GROUP BY value ORDER BY events DESC, value COLLATE "C" NULLS LAST LIMIT $5
"""
# Each row's users from its own bitmaps, through daily_value_user_bits_key: never the
# dimension's other values.
BREAKDOWN = f"""
SELECT t.value, t.events, (
    SELECT coalesce(sum(bit_count(u.users)), 0)::bigint FROM (
        SELECT bit_or(b.users) AS users FROM daily_value_user_bits b
        WHERE b.site_id = $1 AND b.dimension = $4 AND b.date BETWEEN $2 AND $3
          AND (b.value IS NULL) = (t.value IS NULL)
          AND coalesce(b.value, '') = coalesce(t.value, '')
        GROUP BY b.chunk
    ) u
) AS users
FROM ({TOP_VALUES}) t ORDER BY t.events DESC, t.value COLLATE "C" NULLS LAST
"""
DAY_SERIES = f"""
SELECT d::date AS start, coalesce(s.total_views, 0) AS views, coalesce(u.users, 0) AS users
FROM generate_series($2::date, $3::date, interval '1 day') AS d
LEFT JOIN daily_site_stats s ON s.site_id = $1 AND s.date = d::date
LEFT JOIN (
    SELECT date, sum(bit_count(users))::bigint AS users FROM daily_user_bits
    WHERE {SITE_DAYS} GROUP BY date
) u ON u.date = d::date
ORDER BY d
"""
HOUR_SERIES = f"""
SELECT h AS start, coalesce(s.views, 0) AS views, coalesce(u.users, 0) AS users
FROM generate_series($2::date::timestamp AT TIME ZONE 'UTC',
                     ($3::date + 1)::timestamp AT TIME ZONE 'UTC' - interval '1 hour',
                     interval '1 hour') AS h
LEFT JOIN hourly_site_stats s ON s.site_id = $1 AND s.hour = h
LEFT JOIN (
    SELECT hour, sum(bit_count(users))::bigint AS users FROM hourly_user_bits
    WHERE {SITE_HOURS} GROUP BY hour
) u ON u.hour = h
ORDER BY h
"""
# The raw events of one site in a window of at most an hour, through the events key.
REALTIME = """
SELECT count(*) FILTER (WHERE event_type = 'page_view') AS views,
       count(DISTINCT user_id) AS users
FROM events WHERE site_id = $1 AND occurred_at > $2 AND occurred_at <= $3
"""
SITES = """
SELECT site_id, first_date, last_date, total_views FROM sites
WHERE $1::text[] IS NULL OR site_id = ANY($1::text[]) ORDER BY site_id COLLATE "C"
"""

# `queueflow verify`: the aggregates recounted from the raw events, compared with the stored
# ones; `--repair` replaces them by the recount. $1 is a site or NULL for all sites, $2/$3
# bound the UTC days. Raw events are read through their key, by site and time.
SCOPE = "($1::text IS NULL OR site_id = $1)"
DAYS = f"{SCOPE} AND date BETWEEN $2 AND $3"
HOURS = (
    f"{SCOPE} AND hour >= $2::date::timestamp AT TIME ZONE 'UTC' "
    "AND hour < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'"
)
EVENTS = (
    f"{SCOPE} AND occurred_at >= $2::date::timestamp AT TIME ZONE 'UTC' "
    "AND occurred_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'"
)
DAYS_FROM_EVENTS = f"""
SELECT site_id, date, count(*) FILTER (WHERE event_type = 'page_view') AS total_views,
       count(DISTINCT user_id) AS unique_users
FROM events WHERE {EVENTS} GROUP BY site_id, date
"""
HOURS_FROM_EVENTS = f"""
SELECT site_id, date_trunc('hour', occurred_at, 'UTC') AS hour,
       count(*) FILTER (WHERE event_type = 'page_view') AS views
FROM events WHERE {EVENTS} GROUP BY 1, 2
"""
# A value and whether it is NULL, as two columns that a FULL JOIN can match on (a NULL
# referrer is a value of its own; IS NOT DISTINCT FROM cannot drive a FULL JOIN).
NULL_SAFE_VALUE = "value_is_null, value_or_empty"


def _null_safe(rows: str) -> str:
    return (
        "SELECT *, value IS NULL AS value_is_null, coalesce(value, '') AS value_or_empty "
        f"FROM ({rows}) r"
    )


VALUES_FROM_EVENTS = f"""
SELECT site_id, 'path' AS dimension, date, path AS value, count(*) AS events FROM events
WHERE {EVENTS} AND event_type = 'page_view' GROUP BY 1, 3, 4
UNION ALL
SELECT site_id, 'referrer', date, referrer, count(*) FROM events
WHERE {EVENTS} AND event_type = 'page_view' GROUP BY 1, 3, 4
UNION ALL
SELECT site_id, 'event_type', date, event_type, count(*) FROM events WHERE {EVENTS} GROUP BY 1, 3, 4
"""
# The range's events with their users' numbers: what the bitmaps are recounted from.
NUMBERED_EVENTS = f"""
SELECT e.site_id, e.date, date_trunc('hour', e.occurred_at, 'UTC') AS hour, e.event_type,
       e.path, e.referrer, u.user_number
FROM (SELECT * FROM events WHERE {EVENTS}) e JOIN site_users u USING (site_id, user_id)
"""
BIT = "B'1'::bit(1024) >> (user_number & 1023)::int"


def _bits_from(numbered: str) -> dict[str, str]:
    """Each bitmap table's rows recounted from `numbered` (rows of NUMBERED_EVENTS)."""
    return {
        "daily_user_bits": f"""
            SELECT site_id, date, user_number >> 10 AS chunk, bit_or({BIT}) AS users
            FROM {numbered} n GROUP BY 1, 2, 3""",
        "hourly_user_bits": f"""
            SELECT site_id, hour, user_number >> 10 AS chunk, bit_or({BIT}) AS users
            FROM {numbered} n GROUP BY 1, 2, 3""",
        "daily_value_user_bits": f"""
            SELECT site_id, 'path' AS dimension, path AS value, date,
                   user_number >> 10 AS chunk, bit_or({BIT}) AS users
            FROM {numbered} n WHERE event_type = 'page_view' GROUP BY 1, 3, 4, 5
            UNION ALL
            SELECT site_id, 'referrer', referrer, date, user_number >> 10, bit_or({BIT})
            FROM {numbered} n WHERE event_type = 'page_view' GROUP BY 1, 3, 4, 5
            UNION ALL
            SELECT site_id, 'event_type', event_type, date, user_number >> 10, bit_or({BIT})
            FROM {numbered} n GROUP BY 1, 3, 4, 5""",
    }


BITS_FROM_EVENTS = _bits_from(f"({NUMBERED_EVENTS})")
BITS_KEYS = {
    "daily_user_bits": ("site_id, date, chunk", DAYS),
    "hourly_user_bits": ("site_id, hour, chunk", HOURS),
    "daily_value_user_bits": ("site_id, dimension, value, date, chunk", DAYS),
}
STORED_DAYS = f"""
SELECT s.site_id, s.date, s.total_views, coalesce(u.users, 0) AS unique_users
FROM (SELECT * FROM daily_site_stats WHERE {DAYS}) s LEFT JOIN (
    SELECT site_id, date, sum(bit_count(users))::bigint AS users FROM daily_user_bits WHERE {DAYS}
    GROUP BY 1, 2
) u USING (site_id, date)
"""
STATS_DIFFERENCES = f"""
SELECT site_id, date, e.total_views AS expected_views, a.total_views AS stored_views,
       e.unique_users AS expected_users, a.unique_users AS stored_users
FROM ({DAYS_FROM_EVENTS}) e FULL JOIN ({STORED_DAYS}) a USING (site_id, date)
WHERE e.total_views IS DISTINCT FROM a.total_views
   OR e.unique_users IS DISTINCT FROM a.unique_users
ORDER BY site_id, date
"""
HOUR_DIFFERENCES = f"""
SELECT site_id, hour, e.views AS expected_views, a.views AS stored_views
FROM ({HOURS_FROM_EVENTS}) e
FULL JOIN (SELECT * FROM hourly_site_stats WHERE {HOURS}) a USING (site_id, hour)
WHERE e.views IS DISTINCT FROM a.views
ORDER BY site_id, hour
"""
VALUE_DIFFERENCES = f"""
SELECT site_id, dimension, date, coalesce(e.value, a.value) AS value,
       e.events AS expected_events, a.events AS stored_events
FROM ({_null_safe(VALUES_FROM_EVENTS)}) e
FULL JOIN ({_null_safe(f"SELECT * FROM daily_value_counts WHERE {DAYS}")}) a
    USING (site_id, dimension, date, {NULL_SAFE_VALUE})
WHERE e.events IS DISTINCT FROM a.events
ORDER BY 1, 2, 3, coalesce(e.value, a.value) COLLATE "C"
"""
# Rows of each bitmap table that differ from the recount.
BITS_DIFFERENCES = [
    f"""
    SELECT count(*) FROM ({wrap(recount)}) e
    FULL JOIN ({wrap(f"SELECT * FROM {table} WHERE {scope}")}) a
        USING ({keys.replace("value", NULL_SAFE_VALUE)})
    WHERE e.users IS DISTINCT FROM a.users
    """
    for table, recount in BITS_FROM_EVENTS.items()
    for keys, scope in [BITS_KEYS[table]]
    for wrap in [_null_safe if "value" in keys else str]
]
UNNUMBERED_EVENTS = f"""
FROM events e WHERE {EVENTS} AND NOT EXISTS (
    SELECT FROM site_users u WHERE u.site_id = e.site_id AND u.user_id = e.user_id)
"""
UNNUMBERED_USERS = f"SELECT DISTINCT site_id, user_id {UNNUMBERED_EVENTS}"
# The sites rows must equal what the daily rows add up to.
SITES_FROM_DAYS = f"""
SELECT site_id, min(date) AS first_date, max(date) AS last_date,
       sum(total_views)::bigint AS total_views
FROM daily_site_stats WHERE {SCOPE} GROUP BY site_id
"""
SITE_DIFFERENCES = f"""
SELECT count(*) FROM ({SITES_FROM_DAYS}) e
FULL JOIN (SELECT * FROM sites WHERE {SCOPE}) a USING (site_id)
WHERE (e.first_date, e.last_date, e.total_views) IS DISTINCT FROM
      (a.first_date, a.last_date, a.total_views)
"""
CHECKED_DAYS = f"SELECT count(*) FROM ({DAYS_FROM_EVENTS}) e"
# Every table the workers fold batches into (the raw events and site_users aside).
ALL_AGGREGATES = (
    "daily_site_stats, hourly_site_stats, daily_value_counts, daily_user_bits, "
    "hourly_user_bits, daily_value_user_bits, sites"
)
# Rebuilding takes a lock that conflicts with the workers' upserts, so no batch folds into
# the range while it is rebuilt; batches committed before the lock are in the recount,
# batches after it fold into the rebuilt figures. Users without a number get one first.
REBUILD = [
    f"LOCK TABLE {ALL_AGGREGATES} IN SHARE ROW EXCLUSIVE MODE",
    # In order of first appearance, as the workers would have numbered them.
    f"INSERT INTO site_users (site_id, user_id) SELECT site_id, user_id {UNNUMBERED_EVENTS} "
    "GROUP BY site_id, user_id ORDER BY min(occurred_at), 1, 2 ON CONFLICT DO NOTHING",
    f"DELETE FROM daily_site_stats WHERE {DAYS}",
    "INSERT INTO daily_site_stats (site_id, date, total_views) "
    f"SELECT site_id, date, total_views FROM ({DAYS_FROM_EVENTS}) e",
    f"DELETE FROM hourly_site_stats WHERE {HOURS}",
    f"INSERT INTO hourly_site_stats (site_id, hour, views) {HOURS_FROM_EVENTS}",
    f"DELETE FROM daily_value_counts WHERE {DAYS}",
    "INSERT INTO daily_value_counts (site_id, dimension, date, value, events) "
    + VALUES_FROM_EVENTS,
    # Joined once, read by the three bitmap recounts.
    f"CREATE TEMPORARY TABLE rebuilt_users ON COMMIT DROP AS {NUMBERED_EVENTS}",
    *(
        statement
        for table, recount in _bits_from("rebuilt_users").items()
        for statement in (
            f"DELETE FROM {table} WHERE {BITS_KEYS[table][1]}",
            f"INSERT INTO {table} ({BITS_KEYS[table][0]}, users) {recount}",
        )
    ),
    f"DELETE FROM sites WHERE {SCOPE}",
    f"INSERT INTO sites (site_id, first_date, last_date, total_views) {SITES_FROM_DAYS}",
]


# The raw events' days: one partition each (events_dYYYYMMDD), added ahead by the workers and
# dropped by retention through functions owned by the schema's owner (0005).
EVENT_DAYS = """
SELECT to_date(substr(c.relname, 9), 'YYYYMMDD') AS day
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_d[0-9]{8}$' ORDER BY 1
"""
# Days detached by a retention that stopped before dropping them.
DETACHED_DAYS = """
SELECT to_date(substr(c.relname, 9), 'YYYYMMDD') AS day FROM pg_class c
WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
  AND c.relname ~ '^events_d[0-9]{8}$' AND c.relkind = 'r'
  AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)
ORDER BY 1
"""
ADD_DAY = "SELECT queueflow_add_event_day($1)"
BATCH_DAYS = """
SELECT DISTINCT ("timestamp" AT TIME ZONE 'UTC')::date AS day
FROM json_to_recordset($1::json) AS b("timestamp" timestamptz)
"""
DETACH_DAY = "SELECT queueflow_detach_event_day($1)"
EXPIRE_IDS = "SELECT queueflow_expire_event_ids($1, $2, $3)"
DROP_DAY = "SELECT queueflow_drop_event_day($1)"
KEPT_FROM = "SELECT kept_from FROM raw_retention"
# Held by verify and repair: retention cannot take a day away while they read the events.
HOLD_DAYS = "LOCK TABLE events IN ACCESS SHARE MODE"
# Event ids of a day removed per transaction while it expires.
EXPIRE_CHUNK = 10_000


# `queueflow forget`: a user's (or a whole site's) raw events and user-set rows removed and
# the aggregates corrected, in one transaction, under the lock that repair takes (workers'
# batches wait). $1 is the site, $2 the user.
FORGET_LOCK = f"LOCK TABLE events, site_users, {ALL_AGGREGATES} IN SHARE ROW EXCLUSIVE MODE"
FORGET_SITE = [
    FORGET_LOCK,
    *(
        f"DELETE FROM {table} WHERE site_id = $1"
        for table in ("events", "event_ids", "site_users", *ALL_AGGREGATES.split(", "))
    ),
]
# The user's events, removed and kept for the corrections below.
FORGET_EVENTS = """
CREATE TEMPORARY TABLE forgotten ON COMMIT DROP AS
WITH gone AS (
    DELETE FROM events WHERE site_id = $1 AND user_id = $2
    RETURNING event_id, date, date_trunc('hour', occurred_at, 'UTC') AS hour, event_type, path,
              referrer, event_type = 'page_view' AS viewed
)
SELECT * FROM gone
"""
HAS_EVENTS = (
    "EXISTS (SELECT FROM events e WHERE e.site_id = $1 AND e.occurred_at >= {start} "
    "AND e.occurred_at < {start} + interval '{length}')"
)
THE_USER = (
    "(SELECT user_number >> 10 AS chunk, B'1'::bit(1024) >> (user_number & 1023)::int AS bit "
    "FROM site_users WHERE site_id = $1 AND user_id = $2)"
)
FORGET_USER = [
    FORGET_LOCK,
    FORGET_EVENTS,
    "DELETE FROM event_ids i USING forgotten f WHERE i.site_id = $1 AND i.event_id = f.event_id",
    """UPDATE daily_site_stats s SET total_views = s.total_views - f.views
    FROM (SELECT date, count(*) FILTER (WHERE viewed) AS views FROM forgotten GROUP BY 1) f
    WHERE s.site_id = $1 AND s.date = f.date""",
    "DELETE FROM daily_site_stats s WHERE s.site_id = $1 "
    "AND s.date IN (SELECT date FROM forgotten) AND NOT "
    + HAS_EVENTS.format(start="s.date::timestamp AT TIME ZONE 'UTC'", length="1 day"),
    """UPDATE hourly_site_stats s SET views = s.views - f.views
    FROM (SELECT hour, count(*) FILTER (WHERE viewed) AS views FROM forgotten GROUP BY 1) f
    WHERE s.site_id = $1 AND s.hour = f.hour""",
    "DELETE FROM hourly_site_stats s WHERE s.site_id = $1 "
    "AND s.hour IN (SELECT hour FROM forgotten) AND NOT "
    + HAS_EVENTS.format(start="s.hour", length="1 hour"),
    """UPDATE daily_value_counts c SET events = c.events - f.events
    FROM (
        SELECT dimension, date, value, count(*) AS events FROM (
            SELECT 'path' AS dimension, date, path AS value FROM forgotten WHERE viewed
            UNION ALL SELECT 'referrer', date, referrer FROM forgotten WHERE viewed
            UNION ALL SELECT 'event_type', date, event_type FROM forgotten
        ) v GROUP BY 1, 2, 3
    ) f
    WHERE c.site_id = $1 AND c.dimension = f.dimension AND c.date = f.date
      AND (c.value IS NULL) = (f.value IS NULL)
      AND coalesce(c.value, '') = coalesce(f.value, '')""",
    "DELETE FROM daily_value_counts WHERE site_id = $1 AND events <= 0",
    *(
        statement
        for table in ("daily_user_bits", "hourly_user_bits", "daily_value_user_bits")
        for statement in (
            f"UPDATE {table} b SET users = b.users & ~u.bit FROM {THE_USER} u "
            "WHERE b.site_id = $1 AND b.chunk = u.chunk AND (b.users & u.bit) = u.bit",
            f"DELETE FROM {table} b USING {THE_USER} u WHERE b.site_id = $1 "
            "AND b.chunk = u.chunk AND bit_count(b.users) = 0",
        )
    ),
    "DELETE FROM site_users WHERE site_id = $1 AND user_id = $2",
    "DELETE FROM sites WHERE site_id = $1",
    f"INSERT INTO sites (site_id, first_date, last_date, total_views) "
    f"{SITES_FROM_DAYS.replace(SCOPE, 'site_id = $1')}",
]
FORGOTTEN = """
SELECT count(*) AS events, count(*) FILTER (WHERE viewed) AS views,
       count(DISTINCT date) AS days FROM forgotten
"""


def _no_partition(exc: asyncpg.CheckViolationError) -> bool:
    """A row for a day the events table has no partition for (whatever the server's
    language: told by the function that raised it)."""
    return getattr(exc, "server_source_function", None) == "ExecFindPartition"


async def _kept_days_from(conn: asyncpg.Connection, first: date) -> date:
    """`first`, or the first day whose raw events are kept if later, held so (in the
    caller's transaction) against a retention removing more meanwhile."""
    await conn.execute(HOLD_DAYS)
    kept_from = await conn.fetchval(KEPT_FROM)
    return max(first, kept_from) if kept_from else first


def placeholders(statement: str) -> int:
    """How many parameters ($1, $2, ...) a statement takes."""
    return max((int(n) for n in re.findall(r"\$(\d+)", statement)), default=0)


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
    first: date  # the first day checked: the range's, or the first whose raw events are kept
    site_days: int  # site-days that have raw events in the range
    stats: list[dict]  # site-days whose views or unique users differ from the recount
    hours: list[dict]  # hourly_site_stats rows that differ
    values: list[dict]  # daily_value_counts rows that differ
    user_rows: int  # bitmap rows that differ, plus users of the range without a number
    site_rows: int  # sites rows that differ from what their days add up to

    @property
    def clean(self) -> bool:
        return not (self.stats or self.hours or self.values or self.user_rows or self.site_rows)


@dataclass(frozen=True, slots=True)
class Forgotten:
    events: int
    views: int | None  # page views among them (not counted for a whole site)
    days: int
    users: int


@dataclass(frozen=True, slots=True)
class Totals:
    views: int
    unique_users: int
    top_paths: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Point:
    start: datetime  # the bucket's first instant, UTC
    views: int
    unique_users: int


@dataclass(frozen=True, slots=True)
class Row:
    value: str | None
    events: int
    unique_users: int


@dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    first_date: date
    last_date: date
    total_views: int


async def create_pool(
    dsn: str, *, max_size: int, command_timeout: float | None = 60
) -> asyncpg.Pool:
    """A pool that connects on first use, so a service starts (and reports not ready) while
    PostgreSQL is down instead of crash-looping. Services bound each statement; an operator
    command recounting a long range may take longer (command_timeout None)."""
    return await asyncpg.create_pool(
        dsn, min_size=0, max_size=max_size, command_timeout=command_timeout
    )


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
        document = batch_document(events)
        async with self._connection("INSERT", "events") as conn:
            try:
                return await conn.fetchval(SAVE_BATCH, document)
            except asyncpg.CheckViolationError as exc:
                if not _no_partition(exc):
                    raise
            # A day without a partition yet (a back-fill; the workers add days a week
            # ahead): the batch's days are added, and the batch goes again. A day that
            # retention removed is not added back: its events fail again, as the data errors
            # they are, and are set aside.
            for row in await conn.fetch(BATCH_DAYS, document):
                await conn.fetchval(ADD_DAY, row["day"])
            return await conn.fetchval(SAVE_BATCH, document)

    async def event_days(self, *, detached: bool = False) -> list[date]:
        """The days that have a partition of raw events (detached: those a retention left
        detached and not yet dropped)."""
        async with self._connection("SELECT", "pg_inherits") as conn:
            return [r["day"] for r in await conn.fetch(DETACHED_DAYS if detached else EVENT_DAYS)]

    async def add_event_days(self, days: Sequence[date]) -> list[date]:
        """Give each day a partition; returns the days that had none."""
        async with self._connection("CREATE", "events") as conn:
            return [day for day in days if await conn.fetchval(ADD_DAY, day)]

    async def expire_event_day(self, day: date) -> None:
        """Remove a day's raw events: its partition detached (no longer read or written;
        days up to it are no longer verified), its ids removed from event_ids a chunk per
        transaction, then the detached table dropped. Stopped midway, it resumes."""
        async with self._connection("DROP", "events") as conn:
            await conn.fetchval(DETACH_DAY, day)
            after = await conn.fetchval(EXPIRE_IDS, day, EXPIRE_CHUNK, None)
            while after is not None:  # the last key reached: the next chunk starts after it
                after = await conn.fetchval(EXPIRE_IDS, day, EXPIRE_CHUNK, after)
            await conn.fetchval(DROP_DAY, day)

    async def kept_from(self) -> date | None:
        """The first day whose raw events are kept, or None when none were ever removed."""
        async with self._connection("SELECT", "raw_retention") as conn:
            return await conn.fetchval(KEPT_FROM)

    async def totals(self, site_id: str, first: date, last: date, limit: int) -> Totals:
        async with self._connection("SELECT", "daily_site_stats") as conn:
            totals = await conn.fetchrow(RANGE_TOTALS, site_id, first, last)
            paths = await conn.fetch(TOP_VALUES, site_id, first, last, "path", limit)
        return Totals(totals["views"], totals["users"], [(p["value"], p["events"]) for p in paths])

    async def series(self, site_id: str, first: date, last: date, hourly: bool) -> list[Point]:
        async with self._connection("SELECT", "daily_user_bits") as conn:
            found = await conn.fetch(HOUR_SERIES if hourly else DAY_SERIES, site_id, first, last)
        return [
            Point(
                r["start"] if hourly else datetime.combine(r["start"], time(), UTC),
                r["views"],
                r["users"],
            )
            for r in found
        ]

    async def breakdown(
        self, site_id: str, first: date, last: date, dimension: str, limit: int
    ) -> list[Row]:
        async with self._connection("SELECT", "daily_value_counts") as conn:
            found = await conn.fetch(BREAKDOWN, site_id, first, last, dimension, limit)
        return [Row(r["value"], r["events"], r["users"]) for r in found]

    async def realtime(self, site_id: str, since: datetime, until: datetime) -> tuple[int, int]:
        """Page views and distinct users of the events in (since, until]."""
        async with self._connection("SELECT", "events") as conn:
            row = await conn.fetchrow(REALTIME, site_id, since, until)
        return row["views"], row["users"]

    async def sites(self, only: Sequence[str] | None) -> list[Site]:
        async with self._connection("SELECT", "sites") as conn:
            found = await conn.fetch(SITES, None if only is None else list(only))
        return [Site(*r) for r in found]

    async def audit(self, first: date, last: date, site_id: str | None) -> Audit:
        """Compare stored aggregates with a recount from the raw events, in one snapshot, on
        the range's days whose raw events are kept."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            first = await _kept_days_from(conn, first)
            if first > last:
                return Audit(first, 0, [], [], [], 0, 0)
            args = (site_id, first, last)
            unnumbered = await conn.fetchval(f"SELECT count(*) FROM ({UNNUMBERED_USERS}) u", *args)
            bitmap_rows = [await conn.fetchval(q, *args) for q in BITS_DIFFERENCES]
            return Audit(
                first=first,
                site_days=await conn.fetchval(CHECKED_DAYS, *args),
                stats=[dict(r) for r in await conn.fetch(STATS_DIFFERENCES, *args)],
                hours=[dict(r) for r in await conn.fetch(HOUR_DIFFERENCES, *args)],
                values=[dict(r) for r in await conn.fetch(VALUE_DIFFERENCES, *args)],
                user_rows=unnumbered + sum(bitmap_rows),
                site_rows=await conn.fetchval(SITE_DIFFERENCES, site_id),
            )

    async def rebuild_aggregates(self, first: date, last: date, site_id: str | None) -> None:
        """Rewrite the aggregates of the range's kept days from the raw events, in one
        transaction (removed days keep theirs: nothing is left to recount them from)."""
        async with self.pool.acquire() as conn, conn.transaction():
            first = await _kept_days_from(conn, first)
            if first > last:
                return
            args = (site_id, first, last)
            for statement in REBUILD:
                await conn.execute(statement, *args[: placeholders(statement)])

    async def forget(self, site_id: str, user_id: str | None) -> Forgotten:
        """Remove a user of a site (or, with user_id None, the whole site) as if never seen."""
        async with self.pool.acquire() as conn, conn.transaction():
            if user_id is None:
                users = await conn.fetchval(
                    "SELECT count(*) FROM site_users WHERE site_id = $1", site_id
                )
                days = await conn.fetchval(
                    "SELECT count(*) FROM daily_site_stats WHERE site_id = $1", site_id
                )
                events = 0
                for statement in FORGET_SITE:
                    status = await conn.execute(
                        statement, *((site_id,) if "$1" in statement else ())
                    )
                    if statement.startswith("DELETE FROM events"):
                        events = int(status.split()[-1])
                return Forgotten(events=events, views=None, days=days, users=users)
            args = (site_id, user_id)
            known = await conn.fetchval(
                "SELECT count(*) FROM site_users WHERE site_id = $1 AND user_id = $2", *args
            )
            for statement in FORGET_USER:
                await conn.execute(statement, *args[: placeholders(statement)])
            row = await conn.fetchrow(FORGOTTEN)
            return Forgotten(row["events"], row["views"], row["days"], users=known)

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
