"""The workers' upkeep of the raw events' days, at start and hourly: partitions added a week
ahead, so that no batch waits on one, and retention applied (core/retention.py)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from queueflow.core.config import Settings
from queueflow.core.retention import add_days_ahead, apply_retention, resend_risk
from queueflow.core.store import EventStore
from queueflow.worker.retry import POSTGRES_ERRORS, describe

log = structlog.get_logger(__name__)

INTERVAL_S = 3600.0
# After a failure (PostgreSQL down, a lock not had in time), sooner than an hour.
RETRY_S = 60.0


async def keep_raw_days(store: EventStore, settings: Settings, stop: asyncio.Event) -> None:
    if risk := resend_risk(settings):
        log.warning("retention shorter than the accepted event age", detail=risk)
    while not stop.is_set():
        wait_s = INTERVAL_S
        try:
            if added := await add_days_ahead(store):
                log.info("event days added", days=[str(d) for d in added])
            if removed := await apply_retention(store, settings.raw_retention_days):
                log.info("raw events removed", days=[str(d) for d in removed])
        except POSTGRES_ERRORS as exc:
            # Batches still land: a missing day is added by the batch that needs it.
            log.warning("event days upkeep failed", error=describe(exc), retry_s=RETRY_S)
            wait_s = RETRY_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
