"""`queueflow forget`: a user of a site, or a whole site, erased in one transaction, every
aggregate corrected so that `verify` is clean and the reporting figures are those of a
workload in which the user never appeared (an independent recount)."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg

from queueflow.core.config import Settings
from queueflow.core.events import EventWindow, decode_event, encode_event
from queueflow.core.store import ALL_AGGREGATES, EventStore, create_pool, stored_event
from queueflow.core.user_ids import UserIdHasher
from tests.integration.test_operator import queueflow

START = datetime(2026, 11, 20, 20, tzinfo=UTC)  # events run over UTC day boundaries
FIRST, LAST = date(2026, 11, 20), date(2026, 11, 24)


def workload() -> list[dict]:
    events = []
    for i in range(120):
        events.append(
            {
                "site_id": "a.example" if i % 5 else "b.example",
                "event_id": f"e{i}",
                "event_type": "page_view" if i % 4 else "signup",
                "path": f"/p{i % 3}",
                "user_id": f"u{i % 6}",
                "timestamp": (START + timedelta(minutes=37 * i)).isoformat(),
                **({"referrer": f"https://r{i % 2}.example/"} if i % 3 == 0 else {}),
            }
        )
    # u9 is seen on one hour of one day only: forgetting it empties that day and hour.
    events.append(
        {
            **events[1],
            "event_id": "lonely",
            "user_id": "u9",
            "timestamp": (START + timedelta(days=4, hours=3)).isoformat(),
        }
    )
    return events


async def store_events(database_url: str, events: list[dict]) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        rows = [
            stored_event(
                encode_event(decode_event(json.dumps(e).encode(), EventWindow(0))),
                int(time.time() * 1000),
            )
            for e in events
        ]
        assert await EventStore(pool).save_batch(rows) == len(events)
    finally:
        await pool.close()


async def figures(database_url: str, site: str) -> dict:
    pool = await create_pool(database_url, max_size=1)
    store = EventStore(pool)
    try:
        totals = await store.totals(site, FIRST, LAST, 100)
        return {
            "views": totals.views,
            "users": totals.unique_users,
            "paths": totals.top_paths,
            "days": [
                (p.views, p.unique_users) for p in await store.series(site, FIRST, LAST, False)
            ],
            "hours": [
                (p.views, p.unique_users) for p in await store.series(site, FIRST, LAST, True)
            ],
            "referrers": [
                (r.value, r.events, r.unique_users)
                for r in await store.breakdown(site, FIRST, LAST, "referrer", 100)
            ],
            "sites": [
                (s.site_id, s.first_date, s.last_date, s.total_views)
                for s in await store.sites(None)
            ],
        }
    finally:
        await pool.close()


async def test_forgetting_a_user_leaves_what_a_world_without_them_would_show(
    settings: Settings, database_url: str, tmp_path
) -> None:
    events = workload()
    forgotten = [e for e in events if e["site_id"] == "a.example" and e["user_id"] in ("u1", "u9")]
    await store_events(database_url, [e for e in events if e not in forgotten])
    # The same workload without a.example's u1 and u9, stored first: the independent answer.
    without = await figures(database_url, "a.example")
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"TRUNCATE events, event_ids, site_users, {ALL_AGGREGATES}")
    await conn.close()
    await store_events(database_url, events)
    assert (await figures(database_url, "a.example")) != without

    for user in ("u1", "u9"):
        mine = [e for e in events if e["site_id"] == "a.example" and e["user_id"] == user]
        views = sum(e["event_type"] == "page_view" for e in mine)
        days = len({e["timestamp"][:10] for e in mine})
        done = queueflow(settings, "forget", "--site-id", "a.example", "--user-id", user)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == (
            f"forgot user '{user}' of a.example: {len(mine)} events ({views} page views) "
            f"over {days} days"
        )
    assert await figures(database_url, "a.example") == without
    conn = await asyncpg.connect(database_url)
    try:  # the user's number is gone too: nothing is left that names them
        users = "SELECT array_agg(user_id ORDER BY user_id) FROM site_users WHERE site_id = $1"
        assert await conn.fetchval(users, "a.example") == ["u0", "u2", "u3", "u4", "u5"]
    finally:
        await conn.close()
    check = queueflow(settings, "verify", "--from", str(FIRST), "--to", str(LAST))
    assert check.returncode == 0 and "match" in check.stdout, check.stdout

    again = queueflow(settings, "forget", "--site-id", "a.example", "--user-id", "u1")
    assert again.returncode == 0 and "nothing to forget" in again.stdout

    site = queueflow(settings, "forget", "--site-id", "b.example")
    assert site.returncode == 0 and site.stdout.startswith("forgot site b.example: "), site.stdout
    left = await figures(database_url, "b.example")
    assert (left["views"], left["users"], left["referrers"]) == (0, 0, [])
    assert [s[0] for s in left["sites"]] == ["a.example"]
    check = queueflow(settings, "verify", "--from", str(FIRST), "--to", str(LAST))
    assert check.returncode == 0, check.stdout


async def test_with_a_user_id_key_the_raw_id_is_hashed_first(
    settings: Settings, database_url: str
) -> None:
    key = "a-key-of-sixteen-or-more"
    hashed = UserIdHasher(key)("a.example", "alice@example.com")
    base = workload()[1]
    await store_events(
        database_url,
        [
            {**base, "event_id": "h1", "user_id": hashed},
            {**base, "event_id": "h2", "user_id": "someone-else"},
        ],
    )
    done = queueflow(
        settings,
        *("forget", "--site-id", "a.example", "--user-id", "alice@example.com"),
        env={"QUEUEFLOW_USER_ID_KEY": key},
    )
    assert done.returncode == 0 and "1 events" in done.stdout, done.stdout
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT array_agg(user_id) FROM events") == ["someone-else"]
    finally:
        await conn.close()
