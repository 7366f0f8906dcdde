"""Fair reads over partitions: a turn of the partitions per read, a busy one never starving
the others, a block only when a whole turn found nothing (one read over every partition on
one server; one per partition on a cluster, the others left waiting for the next read)."""

from __future__ import annotations

import asyncio
from datetime import date

from redis.crc import key_slot

from queueflow.core.ingest_counts import counts_key
from queueflow.core.partition_reads import FairReads
from queueflow.core.stream import partition_names


class Partitions:
    """Entries waiting in each partition, read as XREADGROUP would: up to `count` at once;
    a blocking read of an empty partition waits until something arrives or the block ends."""

    def __init__(self, *backlogs: int) -> None:
        self.waiting = [[f"p{p}-{i}" for i in range(n)] for p, n in enumerate(backlogs)]
        self.arrived = [asyncio.Event() for _ in backlogs]
        self.reads: list[tuple[int, int | None]] = []

    async def read_one(self, partition: int, count: int, block_ms: int | None) -> list[str]:
        self.reads.append((partition, block_ms))
        if not self.waiting[partition] and block_ms is not None:
            try:
                await asyncio.wait_for(self.arrived[partition].wait(), block_ms / 1000)
            except TimeoutError:
                return []
        taken, self.waiting[partition] = (
            self.waiting[partition][:count],
            self.waiting[partition][count:],
        )
        return taken

    def add(self, partition: int, entry: str) -> None:
        self.waiting[partition].append(entry)
        self.arrived[partition].set()


def test_one_partition_is_the_stream_and_more_are_hash_tagged() -> None:
    assert partition_names("events", 1) == ["events"]
    assert partition_names("events", 3) == ["events:{0}", "events:{1}", "events:{2}"]


def test_ingest_counts_share_their_streams_hash_slot() -> None:
    day = date(2026, 11, 23)
    assert counts_key("events", day, "a.example") == b"{events}:ingest:2026-11-23:a.example"
    for name in ["events", *partition_names("events", 4)]:
        assert key_slot(counts_key(name, day, "a.example")) == key_slot(name.encode()), name


async def test_a_busy_partition_takes_turns_with_the_others() -> None:
    parts = Partitions(1000, 0, 0)
    reads = FairReads(3, parts.read_one, None)
    assert len(await reads.read(10, 100)) == 10
    parts.add(2, "new")
    assert await reads.read(10, 100) == ["new"]  # within a turn, the backlog notwithstanding
    assert (await reads.read(10, 100))[0].startswith("p0-")


async def test_a_block_waits_on_every_partition_at_once_on_a_cluster() -> None:
    parts = Partitions(0, 0, 0, 0)
    reads = FairReads(4, parts.read_one, None)
    reading = asyncio.create_task(reads.read(10, 5_000))
    await asyncio.sleep(0.05)
    parts.add(3, "late")
    assert await asyncio.wait_for(reading, 1) == ["late"]
    # The other partitions' blocking reads are still out: not read again meanwhile.
    parts.add(1, "next")
    assert await asyncio.wait_for(reads.read(10, 5_000), 1) == ["next"]
    assert [p for p, block in parts.reads if block is None].count(1) == 1
    await reads.settle()


async def test_one_server_blocks_with_one_read_over_all() -> None:
    parts = Partitions(0, 0)
    blocked: list[int] = []

    async def read_all(count: int, block_ms: int) -> list[str]:
        blocked.append(block_ms)
        return ["any"]

    reads = FairReads(2, parts.read_one, read_all)
    assert await reads.read(10, 250) == ["any"] and blocked == [250]
    assert parts.reads == [(0, None), (1, None)]  # a turn of non-blocking reads first
    assert await reads.read(10, None) == []  # no block asked: none


async def test_settling_ends_the_reads_still_out() -> None:
    parts = Partitions(0, 0)
    reads = FairReads(2, parts.read_one, None)
    reading = asyncio.create_task(reads.read(10, 60_000))
    await asyncio.sleep(0.05)
    parts.add(0, "x")
    assert await reading == ["x"]
    await asyncio.wait_for(reads.settle(), 1)  # partition 1's read waited 60 s: cancelled
    assert not reads._waits
