"""Reclaiming entries that dead or stuck consumers left pending, with XAUTOCLAIM.

Each pass walks the group's pending list with a cursor carried from call to call, a page
(bounded COUNT) per call, one partition after the other; a new pass starts from the first
partition at 0-0 once the previous one has completed and the interval has passed.
"""

from __future__ import annotations

import time

from queueflow.core import observability as obs
from queueflow.core.stream import Entry, EventStream

START = b"0-0"


class Reclaimer:
    def __init__(
        self,
        stream: EventStream,
        consumer: str,
        *,
        min_idle_ms: int,
        page_size: int,
        interval_s: float,
    ) -> None:
        self.stream = stream
        self.consumer = consumer
        self.min_idle_ms = min_idle_ms
        self.page_size = page_size
        self.interval_s = interval_s
        self.cursor = START
        self.partition = 0  # the partition the cursor walks
        self.partitions = stream.partitions
        self.next_pass_at = 0.0  # the first pass runs at once

    def due(self) -> bool:
        mid_pass = self.cursor != START or self.partition != 0
        return mid_pass or time.monotonic() >= self.next_pass_at

    async def next_page(self) -> list[Entry]:
        """Claim the next page of entries idle longer than min_idle_ms for this consumer."""
        cursor, claimed = await self.stream.claim_idle(
            self.consumer,
            min_idle_ms=self.min_idle_ms,
            cursor=self.cursor,
            count=self.page_size,
            partition=self.partition,
        )
        self.cursor = cursor if cursor else START
        if self.cursor == START:  # this partition's pass is complete
            self.partition = (self.partition + 1) % self.partitions
            if self.partition == 0:
                self.next_pass_at = time.monotonic() + self.interval_s
        obs.WORKER_RECLAIMED.inc(len(claimed))
        return claimed
