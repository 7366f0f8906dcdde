"""What the consumer group has and has not processed, partition by partition, and the upkeep
that follows from it: the figures (backlog for backpressure, the watermark for reporting's
freshness, the gauges), trimming what is processed and deleting idle consumers. A part of
core/stream.py's EventStream (its base class), kept apart as the read side of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

# Deletes consumers that hold nothing and have been idle long, atomically: checking and then
# deleting in two calls could delete a consumer that was handed an entry in between, and
# XGROUP DELCONSUMER drops its pending entries, which would then never be processed.
DELETE_IDLE_CONSUMERS = """
local deleted = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local f = {}
    for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
    if f['name'] ~= ARGV[3] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
        table.insert(deleted, f['name'])
    end
end
return deleted
"""


@dataclass(frozen=True, slots=True)
class StreamStats:
    length: int
    lag: int
    pending: int
    oldest_pending_ms: int | None  # entry-id time of the oldest pending entry
    consumers: int
    dead_letters: int


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class StreamState:
    """The figures and upkeep of EventStream's partitions (`names`) for its `group`."""

    client: Any
    names: list[str]
    group: str
    dead_letter_name: str
    _delete_idle_consumers: Any

    async def backlog(self) -> int:
        """Entries not yet processed by the group, over all partitions: undelivered (lag)
        plus pending."""
        stats = await self.stats()
        return stats.lag + stats.pending

    async def watermark(self) -> tuple[int | None, int]:
        """(Redis time in ms of the oldest entry the group has not processed in any partition,
        or None when it has processed all; how many it has not): every entry older than that
        time is committed. Reporting's freshness."""
        oldest: list[int] = []
        unprocessed = 0
        for name, stats in zip(self.names, await self.partition_stats(), strict=True):
            unprocessed += stats.lag + stats.pending
            if stats.oldest_pending_ms is not None:
                oldest.append(stats.oldest_pending_ms)
            if stats.lag:  # the first entry after the group's last delivered one
                groups = _ok(await self.client.xinfo_groups(name), [])
                group = next((g for g in groups if g["name"].decode() == self.group), None)
                after = b"(" + group["last-delivered-id"] if group else b"-"
                first = await self.client.xrange(name, min=after, max="+", count=1)
                oldest += [parse_id(entry[0])[0] for entry in first or [] if entry[0] is not None]
        return (min(oldest) if oldest else None) if unprocessed else None, unprocessed

    async def trim_processed(self) -> int:
        """XTRIM MINID below the oldest entry any group still needs (pending or undelivered),
        partition by partition. Never MAXLEN, which would drop unprocessed work. Returns how
        many entries went."""
        trimmed = 0
        for name in self.names:
            trimmed += await self._trim_processed(name)
        return trimmed

    async def _trim_processed(self, name: str) -> int:
        try:
            groups = await self.client.xinfo_groups(name)
        except ResponseError:
            return 0
        if not groups:
            return 0  # nobody consumes this stream yet: everything is still needed
        bounds = []
        for group in groups:
            ms, seq = parse_id(group["last-delivered-id"])
            bound = (ms, seq + 1)  # everything after the last delivered entry is still needed
            if group["pending"]:
                oldest = (await self.client.xpending(name, group["name"]))["min"]
                if oldest is not None:  # None: acknowledged since XINFO was read
                    bound = min(bound, parse_id(oldest))
            bounds.append(bound)
        ms, seq = min(bounds)
        return await self.client.xtrim(name, minid=f"{ms}-{seq}", approximate=False)

    async def delete_idle_consumers(self, *, idle_ms: int, keep: str) -> list[str]:
        """XGROUP DELCONSUMER for consumers idle over idle_ms with nothing pending, in every
        partition's group (a consumer is deleted from each partition on its own)."""
        deleted: set[str] = set()
        for name in self.names:
            gone = await self._delete_idle_consumers(keys=[name], args=[self.group, idle_ms, keep])
            deleted.update(n.decode() for n in gone)
        return sorted(deleted)

    async def stats(self) -> StreamStats:
        """The stream as the group sees it, summed over the partitions (backpressure)."""
        parts = await self.partition_stats()
        if len(parts) == 1:
            return parts[0]
        oldest = [s.oldest_pending_ms for s in parts if s.oldest_pending_ms is not None]
        return StreamStats(
            length=sum(s.length for s in parts),
            lag=sum(s.lag for s in parts),
            pending=sum(s.pending for s in parts),
            oldest_pending_ms=min(oldest) if oldest else None,
            consumers=max(s.consumers for s in parts),  # every worker reads every partition
            dead_letters=parts[0].dead_letters,
        )

    async def partition_stats(self) -> list[StreamStats]:
        """Each partition as the group sees it (its dead_letters: the one dead-letter stream's),
        in one pipelined round trip (per node on a cluster): stream metrics, backpressure."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.dead_letter_name)
        for name in self.names:
            pipe.xlen(name)
            pipe.xinfo_groups(name)
            pipe.xpending(name, self.group)
        dead, *replies = await pipe.execute(raise_on_error=False)
        if isinstance(dead, Exception):
            raise dead
        return [self._partition_stats(dead, *replies[i : i + 3]) for i in range(0, len(replies), 3)]

    def _partition_stats(self, dead: int, length: Any, groups: Any, pending: Any) -> StreamStats:
        if isinstance(length, Exception):
            raise length
        # A stream or group not created yet answers with an error. Without a group (no worker
        # ever ran) every entry is still to be processed.
        group = next(
            (g for g in _ok(groups, []) if g["name"].decode() == self.group),
            {"lag": length, "pending": 0, "consumers": 0},
        )
        oldest = _ok(pending, {}).get("min")
        lag = group.get("lag")
        if lag is None:
            # Redis cannot tell the lag after some deletions; what the stream holds beyond
            # the pending entries bounds it.
            lag = max(length - group["pending"], 0)
        return StreamStats(
            length=length,
            lag=lag,
            pending=group["pending"],
            oldest_pending_ms=None if oldest is None else parse_id(oldest)[0],
            consumers=group["consumers"],
            dead_letters=dead,
        )


def _ok(reply: Any, default: Any) -> Any:
    """A pipelined reply, or `default` where Redis answered with an error."""
    if isinstance(reply, ResponseError):
        return default
    if isinstance(reply, Exception):
        raise reply
    return reply
