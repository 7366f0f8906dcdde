"""Periodic stream upkeep that any worker may do: trimming processed entries and deleting
consumers that pod churn left behind."""

from __future__ import annotations

import time

import structlog

from queueflow.core import observability as obs
from queueflow.core.stream import EventStream

log = structlog.get_logger(__name__)


class Housekeeping:
    def __init__(
        self, stream: EventStream, consumer: str, *, interval_s: float, consumer_idle_ms: int
    ) -> None:
        self.stream = stream
        self.consumer = consumer
        self.interval_s = interval_s
        self.consumer_idle_ms = consumer_idle_ms
        self.next_run_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_run_at

    async def run(self) -> None:
        self.next_run_at = time.monotonic() + self.interval_s
        trimmed = await self.stream.trim_processed()
        obs.STREAM_TRIMMED.inc(trimmed)
        deleted = await self.stream.delete_idle_consumers(
            idle_ms=self.consumer_idle_ms, keep=self.consumer
        )
        if deleted:
            obs.CONSUMERS_DELETED.inc(len(deleted))
            log.info("idle consumers deleted", consumers=deleted)
