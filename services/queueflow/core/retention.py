"""The raw events' days: partitions added ahead of the events that need them, and retention
(QUEUEFLOW_RAW_RETENTION_DAYS) dropping whole days, as workers and `queueflow retention` do.
Aggregates are never touched: every reporting route still answers for a removed day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from queueflow.core.config import Settings
from queueflow.core.store import EventStore

# Days given a partition ahead of today (and the day before, for a worker whose clock lags).
DAYS_AHEAD = 7


def utc_today() -> date:
    return datetime.now(UTC).date()


def first_kept_day(keep_days: int, today: date) -> date:
    """Raw events of days older than keep_days days are removed: today counts as day 0."""
    return today - timedelta(days=keep_days)


async def add_days_ahead(store: EventStore, today: date | None = None) -> list[date]:
    """Partitions for yesterday through DAYS_AHEAD days ahead; returns those added."""
    today = today or utc_today()
    return await store.add_event_days(
        [today + timedelta(days=d) for d in range(-1, DAYS_AHEAD + 1)]
    )


async def apply_retention(
    store: EventStore, keep_days: int, today: date | None = None
) -> list[date]:
    """Remove the raw events of every day older than keep_days (0: keep forever), a whole
    day at a time; returns the days removed, oldest first."""
    if keep_days <= 0:
        return []
    first_kept = first_kept_day(keep_days, today or utc_today())
    # And any day a previous run detached but did not finish removing.
    unfinished = await store.event_days(detached=True)
    expired = sorted({*unfinished, *(d for d in await store.event_days() if d < first_kept)})
    for day in expired:
        await store.expire_event_day(day)
    return expired


def resend_risk(settings: Settings) -> str | None:
    """What retention costs deduplication with these settings: an event's id goes with its
    day, so a resend that ingest still accepts after its day was removed counts again."""
    keep, age = settings.raw_retention_days, settings.max_event_age_days
    if keep == 0 or 0 < age < keep:
        return None
    accepted = "any age" if age == 0 else f"up to {age} days old"
    return (
        f"ingest accepts events {accepted} (QUEUEFLOW_MAX_EVENT_AGE_DAYS) but their ids are "
        f"kept {keep} days (QUEUEFLOW_RAW_RETENTION_DAYS): a resend of an event older than "
        "that is counted again; keep the retention longer than the accepted age"
    )
