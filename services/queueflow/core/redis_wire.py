"""The Redis wire: commands packed as RESP here, replies read from redis-py's hiredis reader.

The hot paths (ingest's XADD, the worker's XREADGROUP and XACK) skip redis-py's command
layer: its packing in Python and its per-reply bookkeeping cost more than Redis spends on an
XADD, and a transaction answers every command it queues. This is the only module that packs
RESP or touches redis-py internals: `conn._parser` and its hiredis `_reader`,
`redis._parsers.hiredis.NOT_ENOUGH_DATA`, `ConnectionPool.get_connection()` without
arguments, `send_packed_command`, `disconnect(nowait=True)` and `conn._reader`. The redis-py
versions they hold for are pinned in pyproject.toml; tests/unit/test_redis_wire.py fails when
the hiredis reader stops being reachable, rather than ingest silently taking the slow path.

With a Redis Cluster client the same packed commands go to the primary owning their key, on a
connection of that node taken from redis-py's cluster client (`ClusterNode.acquire_connection`
and `release`, `nodes_manager.initialize()` to re-read the slots): redirects are followed here
as redis-py follows them for its own commands. MOVED (the slot has a new owner: a failover or
a resharding) re-reads the slots and resends, ASK resends once to the importing node after
ASKING, TRYAGAIN waits a moment and resends. A command refused with a redirect was not
executed, so resending it never applies it twice; in a MULTI ... EXEC a refused command makes
EXEC refuse the whole, which is resent whole. A node that does not answer raises, as for one
server, after the slots are re-read (it may have failed over).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
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
Client = redis.Redis | RedisCluster
# Redirects followed for one exchange before its redirect errors are returned: a slot moves
# once per failover or resharding step, so more means the cluster is still settling.
MAX_REDIRECTS = 5
TRYAGAIN_WAIT_S = 0.05


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


MULTI, EXEC, ASKING = command(b"MULTI"), command(b"EXEC"), command(b"ASKING")


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


def streams_entries(reply: Reply) -> list[tuple[bytes, Any]]:
    """(stream, entries) of each stream in an XREADGROUP reply naming several (RESP2 or 3)."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else [(s, e) for s, e in reply]


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
    client: Client,
    commands: Sequence[bytes],
    check: Callable[[list[Reply]], None] | None = None,
    key: bytes | None = None,
) -> list[Reply]:
    """Packed commands written at once on a pooled connection, one reply each (error replies
    returned, not raised), in one round trip bounded by the socket timeout. `check` may raise
    on the replies. On any failure (mid-reply, timed out, cancelled or refused by `check`) the
    connection is disconnected: out of step or in a state nobody expects, it is never reused.
    With a cluster client every command must hash to `key`'s slot: they go to its owner."""
    # The exact type, not isinstance: RedisCluster's protocol metaclass makes that check cost
    # more than the rest of this function on the one-server path.
    if type(client) is RedisCluster:
        replies = await _cluster_exchange(client, commands, key)
        if check is not None:
            check(replies)
        return replies
    pool = cast(redis.Redis, client).connection_pool  # the exact-type test does not narrow
    conn = await pool.get_connection()
    try:
        return await _exchange_on(conn, commands, check)
    finally:
        await pool.release(conn)


async def _exchange_on(
    conn: Any, commands: Sequence[bytes], check: Callable[[list[Reply]], None] | None
) -> list[Reply]:
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


async def _cluster_exchange(
    cluster: RedisCluster, commands: Sequence[bytes], key: bytes | None
) -> list[Reply]:
    if key is None:
        raise ValueError("a cluster exchange needs the key its commands hash to")
    replies: list[Reply] = [None] * len(commands)
    todo = list(range(len(commands)))
    asked: ClusterNode | None = None
    unreachable: BaseException | None = None
    for _ in range(MAX_REDIRECTS + 1):
        node = asked or await _owner(cluster, key)
        sent = [commands[i] for i in todo]
        try:
            got = await _node_exchange(cluster, node, [ASKING, *sent] if asked else sent)
        except _Unreachable as exc:
            # Nothing was sent: after a failover the slot's new owner may take it.
            unreachable = exc.__cause__
            if asked is not None or await _owner(cluster, key) is node:
                raise exc.__cause__ from None  # type: ignore[misc]
            continue
        got = got[1:] if asked else got
        asked = None
        redirected = []
        for i, reply in zip(todo, got, strict=True):
            replies[i] = reply
            if isinstance(reply, AskError | TryAgainError):  # MovedError is an AskError
                redirected.append(i)
            elif isinstance(reply, ClusterDownError):
                await _refresh(cluster)
        if not redirected:
            return replies
        # In MULTI ... EXEC a refused command aborted the whole: resend it whole. Otherwise
        # only the refused commands, the others were applied.
        todo = list(range(len(commands))) if commands[0] == MULTI else redirected
        redirect = replies[redirected[0]]
        if isinstance(redirect, MovedError):
            await _refresh(cluster)
        elif isinstance(redirect, AskError):
            asked = cluster.get_node(host=redirect.host, port=redirect.port)
            if asked is None:
                await _refresh(cluster)
        else:
            await asyncio.sleep(TRYAGAIN_WAIT_S)
    if unreachable is not None and any(reply is None for reply in replies):
        # Owner after owner could not be reached: nothing of what is missing was sent.
        raise unreachable
    return replies


async def _owner(cluster: RedisCluster, key: bytes) -> ClusterNode:
    """The primary owning the key's slot, as the client last read the slots."""
    await cluster.initialize()  # at once when the slots are known
    try:
        return cluster.get_node_from_key(key)  # type: ignore[arg-type, return-value]
    except RedisClusterException as exc:  # no owner known: the cluster is failing over
        await _refresh(cluster)
        raise ClusterDownError(str(exc)) from exc


class _Unreachable(Exception):
    """The node could not be connected to: nothing was sent (the cause says why)."""


async def _node_exchange(
    cluster: RedisCluster, node: ClusterNode, commands: Sequence[bytes]
) -> list[Reply]:
    conn = node.acquire_connection()
    try:
        try:
            await conn.connect()  # returns at once when connected
            reader = conn._reader
            if await conn.can_read() or (reader is not None and reader.exception()):
                # Closed or reset by the server while pooled (it restarted) or out of step: a
                # new connection, as redis-py's own pool does, not a 503 for a dead socket.
                await conn.disconnect(nowait=True)
                await conn.connect()
        except (RedisError, OSError, TimeoutError) as exc:
            await _refresh(cluster)  # the node may be down and its replica promoted
            raise _Unreachable from exc
        try:
            return await _exchange_on(conn, commands, None)
        except (RedisError, OSError, TimeoutError):
            await _refresh(cluster)  # sent, maybe applied: raised, never resent here
            raise
    finally:
        node.release(conn)


async def _refresh(cluster: RedisCluster) -> None:
    """Re-read which node owns which slot (concurrent callers share one reading)."""
    with contextlib.suppress(RedisError, RedisClusterException, OSError, TimeoutError):
        await cluster.nodes_manager.initialize()


async def call(client: Client, packed: bytes, key: bytes | None = None) -> Reply:
    """One packed command, its reply; an error reply is raised (the connection stays in step
    and is reused)."""
    (reply,) = await exchange(client, (packed,), key=key)
    if isinstance(reply, Exception):
        raise reply
    return reply


async def transaction(
    client: Client, commands: Sequence[bytes], key: bytes | None = None
) -> list[Reply]:
    """MULTI, the packed commands and EXEC in one round trip: all of them apply or none do.
    Returns EXEC's replies; a refused transaction raises (raise_for_transaction)."""
    replies = await exchange(client, [MULTI, *commands, EXEC], check=raise_for_transaction, key=key)
    return replies[-1]


async def replicated_transaction(
    client: Client, commands: Sequence[bytes], wait: bytes, key: bytes | None = None
) -> tuple[list[Reply], int]:
    """transaction(), then `wait` (a packed WAIT) in the same round trip and on the same
    connection, so it waits for this transaction's writes: EXEC's replies and how many
    replicas acknowledged them. On a cluster a redirected transaction is resent whole, its
    WAIT with it, to the slot's owner."""
    replies = await exchange(
        client,
        [MULTI, *commands, EXEC, wait],
        check=lambda replies: raise_for_transaction(replies[:-1]),
        key=key,
    )
    acknowledged = replies[-1]
    if isinstance(acknowledged, Exception):
        raise acknowledged
    return replies[-2], int(acknowledged)


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
