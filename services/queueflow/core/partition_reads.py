"""Reading new entries fairly from a stream's partitions (QUEUEFLOW_STREAM_PARTITIONS > 1).

Each read takes one partition's batch, starting after the partition the last batch came
from, so a partition holding a big backlog never starves the others: a new entry anywhere is
read within one turn of the partitions. A read blocks only when a whole turn found nothing,
and then on every partition at once: one XREADGROUP over all the keys on one server; on a
Redis Cluster, where a read naming keys of several slots is refused (CROSSSLOT), one blocking
read per partition, the first to come back answering and the others left waiting for the next
read (a partition whose blocking read is still out is not read again meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

Entries = list[Any]  # of core/stream.py's Entry


class ReadOne(Protocol):
    def __call__(
        self, partition: int, count: int, block_ms: int | None
    ) -> Coroutine[Any, Any, Entries]: ...


class FairReads:
    def __init__(
        self,
        partitions: int,
        read_one: ReadOne,
        read_all_blocking: Callable[[int, int], Awaitable[Entries]] | None,
    ) -> None:
        self.partitions = partitions
        self._read_one = read_one
        self._read_all_blocking = read_all_blocking  # None on a cluster
        self._next = 0  # the partition the next turn starts with
        self._waits: dict[int, asyncio.Task[Entries]] = {}  # cluster: blocking reads out

    async def read(self, count: int, block_ms: int | None) -> Entries:
        if entries := self._take_waited():
            return entries
        for turn in range(self.partitions):
            partition = (self._next + turn) % self.partitions
            if partition in self._waits:
                continue  # its blocking read answers as soon as something arrives
            if entries := await self._read_one(partition, count, None):
                self._next = (partition + 1) % self.partitions
                return entries
        if block_ms is None:
            return []
        if self._read_all_blocking is not None:
            return await self._read_all_blocking(count, block_ms)
        for partition in range(self.partitions):
            if partition not in self._waits:
                self._waits[partition] = asyncio.create_task(
                    self._read_one(partition, count, block_ms)
                )
        await asyncio.wait(self._waits.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._take_waited()

    def _take_waited(self) -> Entries:
        """The entries of the first blocking read that has come back with some; those that
        came back empty are dropped, a failed one raises (its entries, if Redis delivered any,
        are this consumer's pending ones now)."""
        for partition, wait in list(self._waits.items()):
            if wait.done():
                del self._waits[partition]
                if entries := wait.result():
                    return entries
        return []

    async def settle(self) -> None:
        """End the blocking reads still out (at a stop, or before re-reading own pending
        entries): entries Redis delivered to them are read back as this consumer's own."""
        waits, self._waits = list(self._waits.values()), {}
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
