"""How fresh an answer is (README "Reporting API", "Freshness"): `as_of`, the instant before
which every event ingest accepted is counted (the Redis time of the oldest entry the workers
have not committed, or the time of reading when they have committed all), and `lag_entries`,
the entries accepted and not yet committed, for all sites together.

Read from Redis at most once a second per process, never per request. With Redis
unreachable (or not configured), answers still come, with as_of and lag_entries null.
"""

from __future__ import annotations

import asyncio
import time as clock
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from queueflow.core.stream import REDIS_ERRORS, EventStream

log = structlog.get_logger(__name__)
CACHE_S = 1.0


@dataclass(frozen=True, slots=True)
class Freshness:
    as_of: datetime | None
    lag_entries: int | None

    def fields(self, period_end: datetime) -> dict[str, Any]:
        """as_of, lag_entries and complete for an answer about a period ending at
        `period_end` (exclusive)."""
        complete = self.as_of is not None and period_end <= self.as_of
        return {"as_of": self.as_of, "lag_entries": self.lag_entries, "complete": complete}


UNKNOWN = Freshness(None, None)


class Watermark:
    def __init__(self, stream: EventStream | None, timeout_s: float) -> None:
        self.stream = stream
        self.timeout_s = timeout_s
        self._read_at = float("-inf")
        self._last = UNKNOWN
        self._lock = asyncio.Lock()
        self._down = False  # said once per outage, not once a second

    async def read(self) -> Freshness:
        if self.stream is None:
            return UNKNOWN
        if clock.monotonic() - self._read_at < CACHE_S:
            return self._last
        async with self._lock:  # one read for the requests that arrive meanwhile
            if clock.monotonic() - self._read_at >= CACHE_S:
                self._last = await self._fetch(self.stream)
                self._read_at = clock.monotonic()
        return self._last

    async def _fetch(self, stream: EventStream) -> Freshness:
        now = datetime.now(UTC)
        try:
            async with asyncio.timeout(self.timeout_s):
                oldest_ms, unprocessed = await stream.watermark()
        except REDIS_ERRORS as exc:
            if not self._down:
                log.warning("freshness unknown until Redis answers", error=repr(exc))
            self._down = True
            return UNKNOWN
        if self._down:
            log.info("freshness known again: Redis answers")
        self._down = False
        if oldest_ms is None:
            return Freshness(now, unprocessed)
        return Freshness(min(now, datetime.fromtimestamp(oldest_ms / 1000, UTC)), unprocessed)
