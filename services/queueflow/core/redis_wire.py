"""The Redis wire: commands packed as RESP here, replies read from redis-py's hiredis reader.

The hot paths (ingest's XADD, the worker's XREADGROUP and XACK) skip redis-py's command
layer: its packing in Python and its per-reply bookkeeping cost more than Redis spends on an
XADD, and a transaction answers every command it queues. This is the only module that packs
RESP or touches redis-py internals: `conn._parser` and its hiredis `_reader`,
`redis._parsers.hiredis.NOT_ENOUGH_DATA`, `ConnectionPool.get_connection()` without
arguments, `send_packed_command` and `disconnect(nowait=True)`. The redis-py versions they
hold for are pinned in pyproject.toml; tests/unit/test_redis_wire.py fails when the hiredis
reader stops being reachable, rather than ingest silently taking the slow path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError
from redis.utils import HIREDIS_AVAILABLE

try:  # what redis-py's hiredis reader returns for "read more" (internal to redis-py)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - a redis-py without it reads replies one by one
    NOT_ENOUGH_DATA = None

# Whether this redis-py and hiredis let replies be taken from hiredis's reader directly. A
# connection made with another parser class still reads through redis-py: see
# fast_path_available.
FAST_PATH: bool = HIREDIS_AVAILABLE and NOT_ENOUGH_DATA is not None

Reply = Any  # what hiredis or redis-py's parser makes of one reply; error replies are exceptions


def command(*args: bytes) -> bytes:
    """A command in RESP, the Redis wire protocol: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulk(*args)


def bulk(*args: bytes) -> bytes:
    """The arguments of a command as RESP bulk strings (what follows the array header)."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def command_template(*head: bytes) -> bytes:
    """`head` and one more argument, packed ahead for a hot path that varies only the last:
    `template % (len(last), last)` is `command(*head, last)`."""
    return b"*%d\r\n" % (len(head) + 1) + bulk(*head).replace(b"%", b"%%") + b"$%d\r\n%b\r\n"


MULTI, EXEC = command(b"MULTI"), command(b"EXEC")


def pairs(flat: Sequence[bytes] | None) -> dict[bytes, bytes]:
    """A flat [field, value, field, value, ...] reply as a dict (nil: empty)."""
    it = iter(flat or ())
    return dict(zip(it, it, strict=False))


def stream_entries(reply: Reply) -> list[Any]:
    """The [id, [field, value, ...]] entries of an XREADGROUP (or XREAD) reply for one
    stream: RESP2 answers [[stream, entries]], RESP3 (?protocol=3 in the URL) {stream:
    entries}, and nil (empty) when nothing arrived within BLOCK."""
    if not reply:
        return []
    (entries,) = reply.values() if isinstance(reply, dict) else (e for _, e in reply)
    return entries


def raise_for_transaction(replies: Sequence[Reply]) -> None:
    """Raise what refused a MULTI ... EXEC exchange: a refused EXEC (EXECABORT when a command
    was refused while queueing, then nothing applied; its cause is that command's error), or
    the first command that failed inside EXEC."""
    result = replies[-1]
    if isinstance(result, Exception):
        raise result from next((r for r in replies[1:-1] if isinstance(r, Exception)), None)
    for reply in result if isinstance(result, list) else ():
        if isinstance(reply, Exception):
            raise reply


async def exchange(
    client: redis.Redis,
    commands: Sequence[bytes],
    check: Callable[[list[Reply]], None] | None = None,
) -> list[Reply]:
    """Packed commands written at once on a pooled connection, one reply each (error replies
    returned, not raised), in one round trip bounded by the socket timeout. `check` may raise
    on the replies. On any failure (mid-reply, timed out, cancelled or refused by `check`) the
    connection is disconnected: out of step or in a state nobody expects, it is never reused."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(commands, check_health=False)
        timeout = asyncio.timeout(conn.socket_timeout) if conn.socket_timeout else None
        async with timeout or contextlib.nullcontext():
            replies = await _read_replies(conn, len(commands))
        if check is not None:
            check(replies)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


async def call(client: redis.Redis, packed: bytes) -> Reply:
    """One packed command, its reply; an error reply is raised (the connection stays in step
    and is reused)."""
    (reply,) = await exchange(client, (packed,))
    if isinstance(reply, Exception):
        raise reply
    return reply


async def transaction(client: redis.Redis, commands: Sequence[bytes]) -> list[Reply]:
    """MULTI, the packed commands and EXEC in one round trip: all of them apply or none do.
    Returns EXEC's replies; a refused transaction raises (raise_for_transaction)."""
    replies = await exchange(client, [MULTI, *commands, EXEC], check=raise_for_transaction)
    return replies[-1]


def fast_path_available(conn: Any) -> bool:
    """Whether this connection's replies are taken from hiredis's reader directly (true for
    a connected connection of redis-py's default parser when hiredis is installed)."""
    return _hiredis_reader(conn._parser) is not None


def _hiredis_reader(parser: Any) -> Any:
    reader = getattr(parser, "_reader", None)
    if NOT_ENOUGH_DATA is None or reader is None or not hasattr(parser, "read_from_socket"):
        return None
    return reader


async def _read_replies(conn: Any, count: int) -> list[Reply]:
    """`count` replies, errors returned rather than raised: from hiredis's reader, fed from
    the socket until each reply is whole; without it, through redis-py one by one."""
    parser = conn._parser
    reader = _hiredis_reader(parser)
    replies = []
    if reader is None:
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    while len(replies) < count:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            await parser.read_from_socket()
        else:
            replies.append(reply)
    return replies
