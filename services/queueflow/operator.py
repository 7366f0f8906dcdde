"""Operator commands: `queueflow verify` proves the numbers, `queueflow retention` removes
expired raw events, `queueflow forget` erases a user or a site, `queueflow dead-letters` shows
why entries were set aside and pushes them back once the cause is fixed."""

from __future__ import annotations

import json
from datetime import date, timedelta

import asyncpg

from queueflow.core.config import Settings
from queueflow.core.dead_letters import DeadLetters
from queueflow.core.retention import apply_retention, resend_risk
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EventStream, connect
from queueflow.core.user_ids import UserIdHasher


async def verify(
    settings: Settings, first: date, last: date, site_id: str | None, repair: bool
) -> int:
    """Exit 0 when the aggregates equal a recount from the raw events (or were repaired)."""
    pool = await create_pool(settings.database_dsn(), max_size=1, command_timeout=None)
    try:
        store = EventStore(pool)
        audit = await store.audit(first, last, site_id)
        if audit.first > first:
            print(
                f"skipped {first} to {min(last, audit.first - timedelta(days=1))}: their raw "
                "events were removed (QUEUEFLOW_RAW_RETENTION_DAYS); their aggregates stay"
            )
            if audit.first > last:
                return 0
            first = audit.first
        scope = f"{site_id or 'all sites'}, {first} to {last}"
        for row in audit.stats:
            print(
                f"{row['site_id']} {row['date']}: total_views {row['stored_views']} "
                f"(events say {row['expected_views']}), unique_users {row['stored_users']} "
                f"(events say {row['expected_users']})"
            )
        for row in audit.hours:
            print(
                f"{row['site_id']} {row['hour']:%Y-%m-%dT%H:%MZ}: views {row['stored_views']} "
                f"(events say {row['expected_views']})"
            )
        for row in audit.values:
            print(
                f"{row['site_id']} {row['date']} {row['dimension']} {row['value']}: events "
                f"{row['stored_events']} (events say {row['expected_events']})"
            )
        if audit.user_rows:
            print(f"{audit.user_rows} rows of the user bitmaps differ from the events")
        if audit.site_rows:
            print(f"{audit.site_rows} rows of sites differ from their days")
        if audit.clean:
            print(f"verified {audit.site_days} site-days ({scope}): aggregates match the events")
            return 0
        if not repair:
            print(f"MISMATCH ({scope}); run again with --repair to rebuild from the events")
            return 1
        await store.rebuild_aggregates(first, last, site_id)
        after = await store.audit(first, last, site_id)
        print(f"repaired ({scope}): {'aggregates now match' if after.clean else 'STILL DIFFERENT'}")
        return 0 if after.clean else 1
    finally:
        await pool.close()


async def retention(settings: Settings) -> int:
    """Remove the raw events of the days older than QUEUEFLOW_RAW_RETENTION_DAYS now."""
    keep = settings.raw_retention_days
    if keep == 0:
        print("QUEUEFLOW_RAW_RETENTION_DAYS is 0: raw events are kept forever, none removed")
        return 0
    if risk := resend_risk(settings):
        print(f"note: {risk}")
    pool = await create_pool(settings.database_dsn(), max_size=1, command_timeout=None)
    try:
        removed = await apply_retention(EventStore(pool), keep)
    except asyncpg.LockNotAvailableError:
        # A long reader (a verify) holds the events table: waiting would stall the workers.
        print("a reader holds the raw events (a verify?): nothing removed now, try again later")
        return 1
    finally:
        await pool.close()
    for day in removed:
        print(f"removed the raw events of {day}")
    print(f"removed {len(removed)} days; raw events are kept for {keep} days before today")
    return 0


async def forget(settings: Settings, site_id: str, user_id: str | None) -> int:
    """Erase a user of a site (or the site) in one transaction; prints what went."""
    stored = user_id
    if user_id is not None and settings.user_id_key is not None:
        stored = UserIdHasher(settings.user_id_key)(site_id, user_id)  # as ingest stored it
    pool = await create_pool(settings.database_dsn(), max_size=1, command_timeout=None)
    try:
        store = EventStore(pool)
        gone = await store.forget(site_id, stored)
        kept_from = await store.kept_from()
    finally:
        await pool.close()
    if user_id is None:
        print(
            f"forgot site {site_id}: {gone.events} events of {gone.users} users "
            f"over {gone.days} days"
        )
    elif not gone.users:
        print(f"{site_id} has no user {user_id!r}: nothing to forget")
    else:
        print(
            f"forgot user {user_id!r} of {site_id}: {gone.events} events "
            f"({gone.views} page views) over {gone.days} days"
        )
        if kept_from is not None:
            print(
                f"before {kept_from} the raw events were removed: the user is gone from the "
                "unique counts there, their page views stay in the totals, uncounted"
            )
    return 0


async def dead_letters(
    settings: Settings, action: str, ids: list[str], every: bool, count: int, after: str | None
) -> int:
    client = connect(settings.redis_dsn(), timeout_s=10, cluster=settings.redis_cluster)
    try:
        letters = DeadLetters(EventStream(client, settings))
        if action == "list":
            page = await letters.page(count=count, after=after)
            print(f"{await letters.count()} dead letters in {letters.name}")
            for letter in page:
                event_id = _event_id(letter.original.get("event", ""))
                print(
                    f"{letter.id}  deliveries={letter.deliveries}  event_id={event_id}  "
                    f"reason={letter.reason}"
                )
            return 0
        if action == "show":
            found = [await letters.get(entry_id) for entry_id in ids]
            for entry_id, shown in zip(ids, found, strict=True):
                print(json.dumps(shown.as_dict() if shown else {"id": entry_id, "found": False}))
            return 0 if all(found) else 1
        selection = None if every else ids
        if selection is not None and not selection:
            print(f"name dead-letter ids to {action}, or --all")
            return 2
        if action == "replay":
            replayed, skipped = await letters.replay(selection)
            print(f"replayed {replayed} dead letters to {settings.stream}")
            if skipped:
                print(f"left {len(skipped)} without an event field: {' '.join(skipped)}")
            return 0
        print(f"purged {await letters.purge(selection)} dead letters")
        return 0
    finally:
        await client.aclose()


def _event_id(payload: str) -> str:
    try:
        return str(json.loads(payload).get("event_id", "-"))
    except (ValueError, AttributeError):
        return "-"
