"""Backpressure: refuse new events while the workers' backlog is over its limit, so Redis
never grows until it evicts or dies. The backlog is read in the background, not per request."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from queueflow.core.stream import REDIS_ERRORS, EventStream

log = structlog.get_logger(__name__)


class Backlog:
    def __init__(self, stream: EventStream, *, limit: int, refresh_s: float) -> None:
        self.stream = stream
        self.limit = limit
        self.refresh_s = refresh_s
        self.entries = 0
        self.over = False

    async def refresh(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):  # keep the last figure
            async with asyncio.timeout(self.refresh_s):
                self.entries = await self.stream.backlog()
        over = self.entries > self.limit
        if over != self.over:
            log.warning(
                "backlog over its limit: refusing events"
                if over
                else "backlog back under its limit: accepting events",
                backlog=self.entries,
                limit=self.limit,
            )
        self.over = over

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop backpressure for good
                log.exception("backlog refresh failed; keeping the last figure")
            await asyncio.sleep(self.refresh_s)
