"""The Redis Stream: the only place that issues XADD, XGROUP, XREADGROUP and XACK.

An entry holds one field, `event`: the validated event as JSON with its event_id set. The
entry id's millisecond part is the time Redis accepted it, which the worker stores as the
event's received_at.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from queueflow.core.coalescer import Coalescer
from queueflow.core.config import Settings
from queueflow.core.errors import StreamUnavailable

try:  # what redis-py's hiredis reader returns for "read more" (internal to redis-py)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - a redis-py without it reads replies one by one
    NOT_ENOUGH_DATA = None

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


def _command(*args: bytes) -> bytes:
    """A command in RESP, the Redis wire protocol: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + _bulk(*args)


def _bulk(*args: bytes) -> bytes:
    return b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """`count` replies, errors returned rather than raised. hiredis's reader is reached
    through redis-py's parser (not public API); without hiredis, redis-py reads each."""
    parser = conn._parser
    reader = getattr(parser, "_reader", None)
    if NOT_ENOUGH_DATA is None or reader is None or not hasattr(parser, "read_from_socket"):
        replies = []
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    replies = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            await parser.read_from_socket()
        else:
            replies.append(reply)
    return replies


def _pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    it = iter(flat or ())
    return dict(zip(it, it, strict=False))


_MULTI, _EXEC = _command(b"MULTI"), _command(b"EXEC")


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
        # Every untraced XADD of this stream starts with these bytes; only the event differs.
        self._xadd_head = _bulk(b"XADD", self.key, b"*", EVENT_FIELD)
        self._appends = Coalescer(
            self._append, cancelled=lambda: StreamUnavailable("the append was cancelled")
        )
        self._delete_idle_consumers = client.register_script(DELETE_IDLE_CONSUMERS)

    async def add(self, payloads: Sequence[bytes], traceparent: bytes | None = None) -> None:
        """Append events, each with the request's trace context if traced; all of them land
        or none do (StreamUnavailable). Concurrent requests' appends are coalesced into
        shared round trips (core/coalescer.py)."""
        await self._appends.submit((payloads, traceparent))

    async def _append(self, group: list[tuple[Sequence[bytes], bytes | None]]) -> None:
        commands = [
            self._xadd(payload, traceparent)
            for payloads, traceparent in group
            for payload in payloads
        ]
        try:
            if len(commands) == 1:
                await self._send(commands[0])
            else:
                await self._transaction(commands)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StreamUnavailable(str(exc) or type(exc).__name__) from exc

    def _xadd(self, payload: bytes, traceparent: bytes | None) -> bytes:
        if traceparent:
            return _command(
                b"XADD", self.key, b"*", EVENT_FIELD, payload, TRACEPARENT_FIELD, traceparent
            )
        return b"*5\r\n%b$%d\r\n%b\r\n" % (self._xadd_head, len(payload), payload)

    async def _transaction(self, commands: list[bytes]) -> None:
        """MULTI, the commands and EXEC in one round trip: all of them apply or none do.
        Redis, the one part every ingest pod shares, spends a quarter less per XADD than
        inside a Lua script (bench/README.md)."""
        replies = await self._exchange([_MULTI, *commands, _EXEC])
        # A command refused while queueing makes EXEC answer EXECABORT: nothing applied.
        result = replies[-1]
        for reply in (result, *(result if isinstance(result, list) else ())):
            if isinstance(reply, Exception):
                raise reply

    async def _send(self, command: bytes) -> Any:
        """One command, its reply; an error reply is raised."""
        (reply,) = await self._exchange([command])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _exchange(self, commands: list[bytes]) -> list[Any]:
        """Commands packed here, written at once, one reply each (errors returned). The hot
        paths pack and read their own: redis-py's packing in Python and its per-reply
        bookkeeping cost more than Redis spends on an XADD, and a transaction answers every
        command it queues, so replies are taken from the connection's hiredis reader."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(commands, check_health=False)
            timeout = asyncio.timeout(conn.socket_timeout) if conn.socket_timeout else None
            async with timeout or contextlib.nullcontext():
                return await _read_replies(conn, len(commands))
        except BaseException:
            await conn.disconnect(nowait=True)  # out of step mid-reply: never reuse it
            raise
        finally:
            await pool.release(conn)

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
        # Packed and parsed here like appends: redis-py's reply parsing in Python cost the
        # worker more than decoding the events.
        args = [b"XREADGROUP", b"GROUP", self.group.encode(), consumer.encode()]
        args += [b"COUNT", b"%d" % count]
        if block_ms is not None:
            args += [b"BLOCK", b"%d" % block_ms]
        reply = await self._send(_command(*args, b"STREAMS", self.key, start))
        if not reply:
            return []  # nil: nothing arrived within block_ms
        # RESP2 answers [[stream, entries]], RESP3 (?protocol=3 in the URL) {stream: entries}.
        (entries,) = reply.values() if isinstance(reply, dict) else (e for _, e in reply)
        # A pending entry that was trimmed away comes back with no fields.
        return [Entry(entry_id, _pairs(fields)) for entry_id, fields in entries]

    async def pending_count(self, consumer: str) -> int:
        """How many entries this consumer holds unacknowledged."""
        summary = await self.client.xpending(self.name, self.group)
        held = {c["name"]: c["pending"] for c in summary.get("consumers") or ()}
        return int(held.get(consumer.encode(), 0))

    async def ack(self, ids: Sequence[bytes]) -> None:
        if ids:
            await self._send(_command(b"XACK", self.key, self.group.encode(), *ids))

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
        rows = await self.client.xpending_range(
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
        fields = {
            **entry.fields,
            REASON_FIELD: reason.encode(),
            SOURCE_ID_FIELD: entry.id,
            DELIVERIES_FIELD: str(deliveries).encode(),
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.dead_letter_name, fields)
        pipe.xack(self.name, self.group, entry.id)
        await pipe.execute()

    async def backlog(self) -> int:
        """Entries not yet processed by the group: undelivered (lag) plus pending."""
        stats = await self.stats()
        return stats.lag + stats.pending

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


def _ok(reply: object, default: object) -> object:
    """A pipelined reply, or `default` where Redis answered with an error."""
    if isinstance(reply, ResponseError):
        return default
    if isinstance(reply, Exception):
        raise reply
    return reply
