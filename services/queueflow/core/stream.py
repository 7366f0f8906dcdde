"""The Redis Stream: the only place that issues XADD, XGROUP, XREADGROUP and XACK, and the
only one that reads or changes the dead-letter stream.

An entry holds one field, `event`: the validated event as JSON with its event_id set. The
entry id's millisecond part is the time Redis accepted it, which the worker stores as the
event's received_at. The hot paths are packed and read by core/redis_wire.py; the rest goes
through redis-py's commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from queueflow.core import redis_wire as wire
from queueflow.core.coalescer import Coalescer
from queueflow.core.config import Settings
from queueflow.core.errors import StreamUnavailable

EVENT_FIELD = b"event"
REASON_FIELD = b"reason"
SOURCE_ID_FIELD = b"source_id"
DELIVERIES_FIELD = b"deliveries"
TRACEPARENT_FIELD = b"traceparent"

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
class Entry:
    id: bytes
    fields: dict[bytes, bytes]

    @property
    def received_ms(self) -> int:
        return int(self.id.partition(b"-")[0])


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


def connect(url: str, *, timeout_s: float) -> redis.Redis:
    """A client that fails fast: no hidden retries, connect and read bounded by timeout_s
    (socket timeouts, not an asyncio timeout per call, which costs more than the XADD)."""
    return redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
    )


class EventStream:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.name = settings.stream
        self.group = settings.group
        self.dead_letter_name = settings.dead_letter_stream
        self.timeout_s = settings.redis_timeout_s
        self.key = self.name.encode()
        # Every untraced XADD of this stream is these bytes but for the event.
        self._xadd_untraced = wire.command_template(b"XADD", self.key, b"*", EVENT_FIELD)
        # Packed commands counting appended events by site (keys in the stream's hash slot:
        # ingest's accounting), run in each append's transaction; None counts nothing.
        self.count: Callable[[list[str]], list[bytes]] | None = None
        self._appends: Coalescer[tuple[Sequence[bytes], bytes | None, Sequence[str]]]
        self._appends = Coalescer(
            self._append, cancelled=lambda: StreamUnavailable("the append was cancelled")
        )
        self._delete_idle_consumers = client.register_script(DELETE_IDLE_CONSUMERS)

    async def add(
        self,
        payloads: Sequence[bytes],
        traceparent: bytes | None = None,
        sites: Sequence[str] = (),
    ) -> None:
        """Append events, each with the request's trace context if traced; all of them land
        or none do (StreamUnavailable). Concurrent requests' appends are coalesced into
        shared round trips (core/coalescer.py). `sites` (the events' site ids) go to `count`,
        whose commands run in the same transaction: events are counted as they land."""
        await self._appends.submit((payloads, traceparent, sites))

    async def _append(
        self, group: list[tuple[Sequence[bytes], bytes | None, Sequence[str]]]
    ) -> None:
        commands = [
            self._xadd(payload, traceparent)
            for payloads, traceparent, _ in group
            for payload in payloads
        ]
        # One counting command per site for the whole round trip, gathered only when counted.
        count = self.count
        if count is not None and (sites := [s for _, _, group_sites in group for s in group_sites]):
            commands.extend(count(sites))
        try:
            if len(commands) == 1:
                await wire.call(self.client, commands[0])
            else:
                # MULTI ... EXEC, all or nothing: Redis, the one part every ingest pod shares,
                # spends a quarter less per XADD than inside a Lua script (bench/README.md).
                await wire.transaction(self.client, commands)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StreamUnavailable(str(exc) or type(exc).__name__) from exc

    def _xadd(self, payload: bytes, traceparent: bytes | None) -> bytes:
        if traceparent:
            return wire.command(
                b"XADD", self.key, b"*", EVENT_FIELD, payload, TRACEPARENT_FIELD, traceparent
            )
        return self._xadd_untraced % (len(payload), payload)

    async def ensure_group(self) -> None:
        """Create the stream and group, starting at the beginning so no earlier event is missed."""
        try:
            await self.client.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, consumer: str, *, count: int, block_ms: int | None) -> list[Entry]:
        """Entries never delivered to the group before, now delivered to this consumer."""
        return await self._read_group(consumer, count, block_ms, b">")

    async def read_own_pending(self, consumer: str, *, count: int) -> list[Entry]:
        """Entries delivered to this consumer and not acknowledged: what a previous life of
        this consumer name, or a read whose reply was lost, left in hand."""
        return await self._read_group(consumer, count, None, b"0")

    async def _read_group(
        self, consumer: str, count: int, block_ms: int | None, start: bytes
    ) -> list[Entry]:
        # On the wire like appends: redis-py's reply parsing in Python cost the worker more
        # than decoding the events.
        args = [b"XREADGROUP", b"GROUP", self.group.encode(), consumer.encode()]
        args += [b"COUNT", b"%d" % count]
        if block_ms is not None:
            args += [b"BLOCK", b"%d" % block_ms]
        reply = await wire.call(self.client, wire.command(*args, b"STREAMS", self.key, start))
        # A pending entry that was trimmed away comes back with no fields.
        return [
            Entry(entry_id, wire.pairs(fields)) for entry_id, fields in wire.stream_entries(reply)
        ]

    async def pending_count(self, consumer: str) -> int:
        """How many entries this consumer holds unacknowledged."""
        summary = await self.client.xpending(self.name, self.group)
        held = {c["name"]: c["pending"] for c in summary.get("consumers") or ()}
        return int(held.get(consumer.encode(), 0))

    async def ack(self, ids: Sequence[bytes]) -> None:
        if ids:
            await wire.call(self.client, wire.command(b"XACK", self.key, self.group.encode(), *ids))

    async def claim_idle(
        self, consumer: str, *, min_idle_ms: int, cursor: bytes, count: int
    ) -> tuple[bytes, list[Entry]]:
        """XAUTOCLAIM one page; returns the cursor for the next page (b"0-0": pass complete).
        Entries deleted from the stream while pending are dropped from the group by Redis
        itself and reported in the reply's third part, which needs no further action."""
        reply = await self.client.xautoclaim(
            self.name, self.group, consumer, min_idle_ms, cursor, count=count
        )
        next_cursor, claimed = reply[0], reply[1]
        return next_cursor, [Entry(entry_id, fields or {}) for entry_id, fields in claimed]

    async def delivery_counts(self, consumer: str, entries: Sequence[Entry]) -> dict[bytes, int]:
        """How many times each of this consumer's pending entries was delivered (XPENDING)."""
        if not entries:
            return {}
        rows: Any = await self.client.xpending_range(
            self.name,
            self.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 2,
            consumername=consumer,
        )
        return {row["message_id"]: row["times_delivered"] for row in rows}

    async def dead_letter(self, entry: Entry, reason: str, deliveries: int) -> None:
        """Copy the entry with its reason to the dead-letter stream, then ack it: in that order,
        so a crash in between duplicates a dead letter instead of losing an event."""
        fields: dict[Any, Any] = {
            **entry.fields,
            REASON_FIELD: reason.encode(),
            SOURCE_ID_FIELD: entry.id,
            DELIVERIES_FIELD: str(deliveries).encode(),
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.dead_letter_name, fields)
        pipe.xack(self.name, self.group, entry.id)
        await pipe.execute()

    async def dead_letter_count(self) -> int:
        return await self.client.xlen(self.dead_letter_name)

    async def dead_letters(self, *, count: int, after: bytes | str | None = None) -> list[Entry]:
        """Up to `count` dead letters in id order, from the first or from just after `after`."""
        if isinstance(after, bytes):
            after = after.decode()
        start = f"({after}" if after else "-"
        found: Any = await self.client.xrange(
            self.dead_letter_name, min=start, max="+", count=count
        )
        return [Entry(entry_id, fields) for entry_id, fields in found]

    async def get_dead_letter(self, entry_id: bytes | str) -> Entry | None:
        found: Any = await self.client.xrange(self.dead_letter_name, min=entry_id, max=entry_id)
        return Entry(*found[0]) if found else None

    async def delete_dead_letters(self, ids: Sequence[bytes | str] | None) -> int:
        """Delete these dead letters (all when None); returns how many there were."""
        if ids is None:
            pipe = self.client.pipeline(transaction=True)  # counted and deleted at once
            pipe.xlen(self.dead_letter_name)
            pipe.delete(self.dead_letter_name)
            removed, _ = await pipe.execute()
            return removed
        return await self.client.xdel(self.dead_letter_name, *ids) if ids else 0

    async def backlog(self) -> int:
        """Entries not yet processed by the group: undelivered (lag) plus pending."""
        stats = await self.stats()
        return stats.lag + stats.pending

    async def watermark(self) -> tuple[int | None, int]:
        """(Redis time in ms of the oldest entry the group has not processed, or None when it
        has processed all; how many it has not): every entry older than that time is
        committed. Reporting's freshness."""
        stats = await self.stats()
        unprocessed = stats.lag + stats.pending
        oldest = [] if stats.oldest_pending_ms is None else [stats.oldest_pending_ms]
        if stats.lag:  # the first entry after the group's last delivered one
            groups = _ok(await self.client.xinfo_groups(self.name), [])
            group = next((g for g in groups if g["name"].decode() == self.group), None)
            after = b"(" + group["last-delivered-id"] if group else b"-"
            first = await self.client.xrange(self.name, min=after, max="+", count=1)
            oldest += [parse_id(entry[0])[0] for entry in first or [] if entry[0] is not None]
        return (min(oldest) if oldest else None) if unprocessed else None, unprocessed

    async def trim_processed(self) -> int:
        """XTRIM MINID below the oldest entry any group still needs (pending or undelivered).
        Never MAXLEN, which would drop unprocessed work. Returns how many entries went."""
        try:
            groups = await self.client.xinfo_groups(self.name)
        except ResponseError:
            return 0
        if not groups:
            return 0  # nobody consumes this stream yet: everything is still needed
        bounds = []
        for group in groups:
            ms, seq = parse_id(group["last-delivered-id"])
            bound = (ms, seq + 1)  # everything after the last delivered entry is still needed
            if group["pending"]:
                oldest = (await self.client.xpending(self.name, group["name"]))["min"]
                if oldest is not None:  # None: acknowledged since XINFO was read
                    bound = min(bound, parse_id(oldest))
            bounds.append(bound)
        ms, seq = min(bounds)
        return await self.client.xtrim(self.name, minid=f"{ms}-{seq}", approximate=False)

    async def delete_idle_consumers(self, *, idle_ms: int, keep: str) -> list[str]:
        """XGROUP DELCONSUMER for consumers idle over idle_ms with nothing pending."""
        deleted = await self._delete_idle_consumers(
            keys=[self.name], args=[self.group, idle_ms, keep]
        )
        return [name.decode() for name in deleted]

    async def stats(self) -> StreamStats:
        """The stream as the group sees it, in one round trip (stream metrics, backpressure)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.name)
        pipe.xlen(self.dead_letter_name)
        pipe.xinfo_groups(self.name)
        pipe.xpending(self.name, self.group)
        length, dead, groups, pending = await pipe.execute(raise_on_error=False)
        for reply in (length, dead):
            if isinstance(reply, Exception):
                raise reply
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

    async def ping(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self.client.ping()


def _ok(reply: Any, default: Any) -> Any:
    """A pipelined reply, or `default` where Redis answered with an error."""
    if isinstance(reply, ResponseError):
        return default
    if isinstance(reply, Exception):
        raise reply
    return reply
