"""The Redis Stream: the only place that issues XADD, XGROUP, XREADGROUP and XACK, and the
only one that reads or changes the dead-letter stream.

An entry holds one field, `event`: the validated event as JSON with its event_id set. The
entry id's millisecond part is the time Redis accepted it, which the worker stores as the
event's received_at. The hot paths are packed and read by core/redis_wire.py; the rest goes
through redis-py's commands.

With QUEUEFLOW_STREAM_PARTITIONS N > 1 the stream is N streams, `STREAM:{0}` to
`STREAM:{N-1}` (hash tags: on a Redis Cluster each is a slot of its own, spread over the
primaries), each with the group. Each append round trip goes to the next partition in turn,
whole (one request's events never straddle two), passing over for a second a partition where
one just failed; entries carry the partition they were read
from, and are acknowledged, claimed and dead-lettered there; the figures (backlog, watermark,
stats) and the upkeep cover every partition (core/stream_state.py, EventStream's base class).
The dead-letter stream stays one, each dead letter
naming its source partition. With a Redis Cluster client (QUEUEFLOW_REDIS_CLUSTER) every
command goes to its key's owner: redis-py's cluster client routes its own commands, and
core/redis_wire.py the packed ones. With QUEUEFLOW_REDIS_WAIT_REPLICAS an append is confirmed
by that many replicas (WAIT, in the same round trip) before it counts as done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from queueflow.core import redis_wire as wire
from queueflow.core.coalescer import Coalescer
from queueflow.core.config import Settings
from queueflow.core.errors import StreamUnavailable
from queueflow.core.partition_reads import FairReads
from queueflow.core.stream_state import DELETE_IDLE_CONSUMERS, StreamState, StreamStats, parse_id

__all__ = [  # StreamStats and parse_id live in core/stream_state.py, its figures
    "DELIVERIES_FIELD",
    "EVENT_FIELD",
    "REASON_FIELD",
    "REDIS_ERRORS",
    "SOURCE_ID_FIELD",
    "SOURCE_STREAM_FIELD",
    "TRACEPARENT_FIELD",
    "Entry",
    "EventStream",
    "StreamStats",
    "connect",
    "parse_id",
    "partition_names",
]

# What a Redis call raises when Redis (or a cluster's topology) fails: the cluster client's
# own "no node for this slot" is not a RedisError.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

EVENT_FIELD = b"event"
REASON_FIELD = b"reason"
SOURCE_ID_FIELD = b"source_id"
DELIVERIES_FIELD = b"deliveries"
SOURCE_STREAM_FIELD = b"source_stream"  # the partition a dead letter came from
TRACEPARENT_FIELD = b"traceparent"
PING = wire.command(b"PING")
# How long appends pass over a partition after one failed there (one probe a second).
AVOID_S = 1.0

# Counts and deletes the dead letters at once, on one server or on a cluster's node alike.
DELETE_ALL = "local n = redis.call('XLEN', KEYS[1]); redis.call('DEL', KEYS[1]); return n"


@dataclass(frozen=True, slots=True)
class Entry:
    id: bytes
    fields: dict[bytes, bytes]
    partition: int = 0  # the index of the partition it was read from

    @property
    def received_ms(self) -> int:
        return int(self.id.partition(b"-")[0])


def partition_names(stream: str, partitions: int) -> list[str]:
    """The streams of a stream in `partitions` partitions: itself when there is one."""
    if partitions == 1:
        return [stream]
    return [f"{stream}:{{{i}}}" for i in range(partitions)]


def connect(url: str, *, timeout_s: float, cluster: bool = False) -> wire.Client:
    """A client that fails fast: no hidden retries, connect and read bounded by timeout_s
    (socket timeouts, not an asyncio timeout per call, which costs more than the XADD). With
    `cluster`, redis-py's cluster client, started from the node `url` names; it follows
    MOVED and ASK itself (and core/redis_wire.py for the packed commands)."""
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    return redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
    )


class EventStream(StreamState):
    def __init__(self, client: wire.Client, settings: Settings) -> None:
        self.client: Any = client  # redis.Redis or RedisCluster: the same commands
        self.cluster = isinstance(client, RedisCluster)
        self.name = settings.stream
        self.names = partition_names(settings.stream, settings.stream_partitions)
        self.keys = [name.encode() for name in self.names]
        self.partitions = len(self.names)
        self.group = settings.group
        self.dead_letter_name = settings.dead_letter_stream
        self.timeout_s = settings.redis_timeout_s
        # Every untraced XADD of a partition is these bytes but for the event.
        self._xadd_untraced = [
            wire.command_template(b"XADD", key, b"*", EVENT_FIELD) for key in self.keys
        ]
        self._next_append = 0  # the partition the next append round trip goes to
        # Until when each partition is passed over by appends, after one failed there (0: it
        # did not), and how many append round trips each has in flight.
        self._avoid_until = [0.0] * self.partitions
        self._in_flight = [0] * self.partitions
        # WAIT's timeout is half the call's: its reply still arrives before the socket's.
        self.wait_replicas = settings.redis_wait_replicas
        wait_ms = b"%d" % max(1, int(settings.redis_timeout_s * 500))
        self._wait = wire.command(b"WAIT", b"%d" % self.wait_replicas, wait_ms)
        # Packed commands counting appended events by site for a partition (keys in its hash
        # slot: ingest's accounting), run in each append's transaction; None counts nothing.
        self.count: Callable[[list[str], int], list[bytes]] | None = None
        self._appends: Coalescer[tuple[Sequence[bytes], bytes | None, Sequence[str]]]
        self._appends = Coalescer(
            self._append,
            cancelled=lambda: StreamUnavailable("the append was cancelled"),
            # With one stream, what failed a round trip fails those queued behind it; with
            # partitions they go to another.
            fail_queued=self.partitions == 1,
        )
        self._delete_idle_consumers = client.register_script(DELETE_IDLE_CONSUMERS)
        self._delete_all = client.register_script(DELETE_ALL)
        self._reads = FairReads(
            self.partitions, self._read_partition, None if self.cluster else self._read_all
        )
        self._consumer = ""  # whose reads self._reads serves (one consumer per stream object)

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
        partition = self._next_partition() if self.partitions > 1 else 0
        key = self.keys[partition]
        try:
            commands = [
                self._xadd(payload, traceparent, partition)
                for payloads, traceparent, _ in group
                for payload in payloads
            ]
            # One counting command per site for the whole round trip, only when counted.
            count = self.count
            if count is not None and (sites := [s for _, _, g_sites in group for s in g_sites]):
                commands.extend(count(sites, partition))
            if self.wait_replicas:
                await self._append_replicated(commands, key)
            elif len(commands) == 1:
                await wire.call(self.client, commands[0], key)
            else:
                # MULTI ... EXEC, all or nothing: Redis, the one part every ingest pod shares,
                # spends a quarter less per XADD than inside a Lua script (bench/README.md).
                await wire.transaction(self.client, commands, key)
        except (StreamUnavailable, *REDIS_ERRORS) as exc:
            if self.partitions > 1:
                self._avoid(partition)
            if isinstance(exc, StreamUnavailable):
                raise
            # Redirected (MOVED, ASK) round trips were resent by the wire; one that timed out
            # may have landed: the client's retry with the same event ids is counted once.
            raise StreamUnavailable(str(exc) or type(exc).__name__) from exc
        else:
            if self.partitions > 1:
                self._avoid_until[partition] = 0.0
        finally:
            if self.partitions > 1:
                self._in_flight[partition] -= 1

    def _next_partition(self) -> int:
        """The partitions in turn, a whole round trip to each, passing over those busy with
        another round trip and those where an append failed within AVOID_S (any partition
        takes any event). A failed partition is probed by one round trip at a time, so one
        primary timing out, or with its replica behind, holds up one of the two round trips
        in flight (core/coalescer.py) for a moment a second, never both."""
        now = time.monotonic()
        start, n = self._next_append, self.partitions
        order = [(start + i) % n for i in range(n)]
        partition = next(
            (p for p in order if self._avoid_until[p] <= now and not self._in_flight[p]),
            next((p for p in order if self._avoid_until[p] <= now), start),
        )
        if self._avoid_until[partition]:  # this round trip probes it; the others pass it by
            self._avoid_until[partition] = now + AVOID_S
        self._next_append = (partition + 1) % n
        self._in_flight[partition] += 1
        return partition

    def _avoid(self, partition: int) -> None:
        """Pass over the partition for AVOID_S, and on a cluster the others its primary
        holds: they time out, or lack replicas, alike."""
        until = time.monotonic() + AVOID_S
        self._avoid_until[partition] = until
        if not self.cluster:
            return
        try:
            node = self.client.get_node_from_key(self.names[partition])
            for i, name in enumerate(self.names):
                if self.client.get_node_from_key(name) is node:
                    self._avoid_until[i] = until
        except RedisClusterException:  # no owner known: the slots are being re-read
            pass

    async def _append_replicated(self, commands: list[bytes], key: bytes) -> None:
        _, acknowledged = await wire.replicated_transaction(self.client, commands, self._wait, key)
        if acknowledged < self.wait_replicas:
            # Appended, not yet replicated: kept if this primary lives, gone if it crashes now.
            # The 503 names the ids, so the client's retry is stored once either way (and
            # counted again in /stats/ingest, as after a timeout that landed).
            raise StreamUnavailable(
                f"{acknowledged} of {self.wait_replicas} replicas confirmed the append in time"
            )

    def _xadd(self, payload: bytes, traceparent: bytes | None, partition: int = 0) -> bytes:
        if traceparent:
            return wire.command(
                b"XADD",
                self.keys[partition],
                b"*",
                EVENT_FIELD,
                payload,
                TRACEPARENT_FIELD,
                traceparent,
            )
        untraced = self._xadd_untraced[partition]
        return untraced % (len(payload), payload)

    async def ensure_group(self) -> None:
        """Create each partition and its group, starting at the beginning so no earlier event
        is missed."""
        group = self.group.encode()
        for key in self.keys:
            # Packed: a cluster client asks a node for XGROUP's key position first.
            create = wire.command(b"XGROUP", b"CREATE", key, group, b"0", b"MKSTREAM")
            try:
                await wire.call(self.client, create, key)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_new(self, consumer: str, *, count: int, block_ms: int | None) -> list[Entry]:
        """Entries never delivered to the group before, now delivered to this consumer: one
        partition's batch, the partitions in turn (core/partition_reads.py)."""
        if self.partitions == 1:
            return await self._read_group(0, consumer, count, block_ms, b">")
        self._consumer = consumer
        return await self._reads.read(count, block_ms)

    async def settle_reads(self) -> None:
        """End blocking reads still waiting on partitions (a cluster's): before re-reading own
        pending entries, which then include whatever they were delivered."""
        await self._reads.settle()

    async def read_own_pending(self, consumer: str, *, count: int) -> list[Entry]:
        """Entries delivered to this consumer and not acknowledged: what a previous life of
        this consumer name, or a read whose reply was lost, left in hand (the first partition
        holding any)."""
        for partition in range(self.partitions):
            if entries := await self._read_group(partition, consumer, count, None, b"0"):
                return entries
        return []

    async def _read_partition(
        self, partition: int, count: int, block_ms: int | None
    ) -> list[Entry]:
        return await self._read_group(partition, self._consumer, count, block_ms, b">")

    def _read_args(self, consumer: str, count: int, block_ms: int | None) -> list[bytes]:
        args = [b"XREADGROUP", b"GROUP", self.group.encode(), consumer.encode()]
        args += [b"COUNT", b"%d" % count]
        if block_ms is not None:
            args += [b"BLOCK", b"%d" % block_ms]
        return args

    async def _read_group(
        self, partition: int, consumer: str, count: int, block_ms: int | None, start: bytes
    ) -> list[Entry]:
        # On the wire like appends: redis-py's reply parsing in Python cost the worker more
        # than decoding the events.
        key = self.keys[partition]
        args = self._read_args(consumer, count, block_ms)
        reply = await wire.call(self.client, wire.command(*args, b"STREAMS", key, start), key)
        # A pending entry that was trimmed away comes back with no fields.
        return [
            Entry(entry_id, wire.pairs(fields), partition)
            for entry_id, fields in wire.stream_entries(reply)
        ]

    async def _read_all(self, count: int, block_ms: int) -> list[Entry]:
        """One blocking read over every partition (one server: no slots to cross). COUNT
        applies per stream: each is asked for its share, so the batch stays `count` at most."""
        args = self._read_args(self._consumer, -(-count // self.partitions), block_ms)
        starts = [b">"] * self.partitions
        reply = await wire.call(self.client, wire.command(*args, b"STREAMS", *self.keys, *starts))
        index = {key: i for i, key in enumerate(self.keys)}
        return [
            Entry(entry_id, wire.pairs(fields), index[key])
            for key, entries in wire.streams_entries(reply)
            for entry_id, fields in entries
        ]

    async def pending_count(self, consumer: str) -> int:
        """How many entries this consumer holds unacknowledged, over all partitions."""
        held = 0
        for name in self.names:
            summary = await self.client.xpending(name, self.group)
            by_name = {c["name"]: c["pending"] for c in summary.get("consumers") or ()}
            held += int(by_name.get(consumer.encode(), 0))
        return held

    async def ack(self, ids: Sequence[bytes], partition: int = 0) -> None:
        if ids:
            key = self.keys[partition]
            xack = wire.command(b"XACK", key, self.group.encode(), *ids)
            await wire.call(self.client, xack, key)

    async def ack_entries(self, entries: Sequence[Entry]) -> None:
        """XACK each entry on its own partition: one command per partition, in one round trip
        on one server, concurrently on a cluster's nodes."""
        if not entries:
            return
        first = entries[0].partition
        if self.partitions == 1 or all(e.partition == first for e in entries):  # the usual
            await self.ack([e.id for e in entries], first)
            return
        by_partition: dict[int, list[bytes]] = {}
        for entry in entries:
            by_partition.setdefault(entry.partition, []).append(entry.id)
        if self.cluster:
            await asyncio.gather(*(self.ack(ids, p) for p, ids in by_partition.items()))
            return
        group = self.group.encode()
        xacks = [wire.command(b"XACK", self.keys[p], group, *i) for p, i in by_partition.items()]
        for reply in await wire.exchange(self.client, xacks):
            if isinstance(reply, Exception):
                raise reply

    async def claim_idle(
        self, consumer: str, *, min_idle_ms: int, cursor: bytes, count: int, partition: int = 0
    ) -> tuple[bytes, list[Entry]]:
        """XAUTOCLAIM one page of a partition; returns the cursor for its next page (b"0-0":
        the partition's pass is complete). Entries deleted from the stream while pending are
        dropped from the group by Redis itself and reported in the reply's third part, which
        needs no further action."""
        reply = await self.client.xautoclaim(
            self.names[partition], self.group, consumer, min_idle_ms, cursor, count=count
        )
        next_cursor, claimed = reply[0], reply[1]
        return next_cursor, [
            Entry(entry_id, fields or {}, partition) for entry_id, fields in claimed
        ]

    async def delivery_counts(self, consumer: str, entries: Sequence[Entry]) -> dict[bytes, int]:
        """How many times each of this consumer's pending entries was delivered (XPENDING)."""
        counts: dict[bytes, int] = {}
        by_partition: dict[int, list[Entry]] = {}
        for entry in entries:
            by_partition.setdefault(entry.partition, []).append(entry)
        for partition, held in by_partition.items():
            rows: Any = await self.client.xpending_range(
                self.names[partition],
                self.group,
                min=min(held, key=lambda e: parse_id(e.id)).id,
                max=max(held, key=lambda e: parse_id(e.id)).id,
                count=len(held) * 2,
                consumername=consumer,
            )
            counts.update((row["message_id"], row["times_delivered"]) for row in rows)
        return counts

    async def dead_letter(self, entry: Entry, reason: str, deliveries: int) -> None:
        """Copy the entry with its reason to the dead-letter stream, then ack it: in that order,
        so a crash in between duplicates a dead letter instead of losing an event."""
        source = self.names[entry.partition]
        fields: dict[Any, Any] = {
            **entry.fields,
            REASON_FIELD: reason.encode(),
            SOURCE_ID_FIELD: entry.id,
            SOURCE_STREAM_FIELD: source.encode(),
            DELIVERIES_FIELD: str(deliveries).encode(),
        }
        if self.cluster:  # two slots, maybe two nodes: a pipeline would send both at once
            await self.client.xadd(self.dead_letter_name, fields)
            await self.client.xack(source, self.group, entry.id)
            return
        # MULTI ... EXEC: an XADD refused (out of memory under noeviction) aborts the XACK.
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_name, fields)
        pipe.xack(source, self.group, entry.id)
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
        if ids is None:  # counted and deleted at once
            return int(await self._delete_all(keys=[self.dead_letter_name]))
        return await self.client.xdel(self.dead_letter_name, *ids) if ids else 0

    async def ping(self) -> None:
        """Redis answers; on a cluster, each node owning a partition."""
        async with asyncio.timeout(self.timeout_s):
            if not self.cluster:
                await self.client.ping()
                return
            try:
                await asyncio.gather(*(wire.call(self.client, PING, key) for key in self.keys))
            except REDIS_ERRORS:
                # A pooled connection to a node that failed over: the slots were read
                # again, ask the owners now.
                await asyncio.gather(*(wire.call(self.client, PING, key) for key in self.keys))
