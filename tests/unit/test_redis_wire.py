"""core/redis_wire.py without a Redis server: the exact bytes it packs, the replies it reads
through a real redis-py connection and hiredis reader from a loopback server that answers
with prepared bytes in pieces, what a refused transaction or a broken reply does to the
connection, and that the hiredis fast path is really in use with the installed redis-py."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import hiredis
import pytest
import redis.asyncio as redis
from redis._parsers import _AsyncRESP2Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, ResponseError

from queueflow.core import redis_wire as wire
from queueflow.core.config import load_settings
from queueflow.core.errors import StreamUnavailable
from queueflow.core.stream import Entry, EventStream, connect

# What the loopback server answers to redis-py's connection handshake.
HANDSHAKE = {
    b"CLIENT": b"+OK\r\n",
    b"SELECT": b"+OK\r\n",
    b"HELLO": b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n",
}


@dataclass
class Answer:
    """Once `commands` more commands arrived, `reply` is written in `split(reply)` pieces;
    then "close" closes the connection and "stall" never writes again."""

    reply: bytes
    commands: int = 1
    then: str | None = None


@dataclass
class ScriptedServer:
    """A loopback TCP server that answers redis-py's handshake itself and every other
    command from a script, recording each command as parsed and as the bytes it came in."""

    answers: list[Answer] = field(default_factory=list)
    split: Callable[[bytes], list[bytes]] = lambda b: [b]
    commands: list[list[bytes]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections the client closed
    writes: int = 0
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def answer(self, reply: bytes, commands: int = 1, then: str | None = None) -> None:
        self.answers.append(Answer(reply, commands, then))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        buffer, waiting = b"", 0
        try:
            while data := await reader.read(65536):
                buffer += data
                while (taken := _take_command(buffer)) is not None:
                    args, raw, buffer = taken
                    if args[0].upper() in HANDSHAKE:
                        writer.write(HANDSHAKE[args[0].upper()])
                        continue
                    self.commands.append(args)
                    self.raw.append(raw)
                    waiting += 1
                    if self.answers and waiting >= self.answers[0].commands:
                        answer = self.answers.pop(0)
                        waiting -= answer.commands
                        for piece in self.split(answer.reply):
                            writer.write(piece)
                            await writer.drain()
                            self.writes += 1
                            await asyncio.sleep(0.0005)
                        if answer.then == "close":
                            writer.close()
                            return
                        if answer.then == "stall":
                            await asyncio.Event().wait()
            self.closed += 1
        except (ConnectionError, asyncio.CancelledError):
            self.closed += 1
        finally:
            writer.close()


def _take_command(buffer: bytes) -> tuple[list[bytes], bytes, bytes] | None:
    """One RESP request (an array of bulk strings) off the front of `buffer`, if whole."""
    head, sep, _ = buffer.partition(b"\r\n")
    if not sep:
        return None
    assert head.startswith(b"*"), buffer
    args, at = [], len(head) + 2
    for _ in range(int(head[1:])):
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        assert buffer[at : at + 1] == b"$", buffer
        size = int(buffer[at + 1 : end])
        if len(buffer) < end + 2 + size + 2:
            return None
        args.append(buffer[end + 2 : end + 2 + size])
        at = end + 2 + size + 2
    return args, buffer[:at], buffer[at:]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    tcp = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    scripted.port = tcp.sockets[0].getsockname()[1]
    async with tcp:
        yield scripted
        tcp.close()
        for handler in scripted.handlers:  # a stalled one would wait forever
            handler.cancel()
        await asyncio.gather(*scripted.handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def client_of(server: ScriptedServer, **options: object) -> AsyncIterator[redis.Redis]:
    if options:
        options = {"socket_timeout": 2, **options}
        client = redis.from_url(f"redis://127.0.0.1:{server.port}", **options)
    else:  # exactly as the services connect
        client = connect(f"redis://127.0.0.1:{server.port}", timeout_s=2)
    try:
        yield client
    finally:
        await client.aclose()


def stream_of(client: redis.Redis, stream: str = "events") -> EventStream:
    settings = load_settings(
        redis_url="redis://localhost", stream=stream, group="g", dead_letter_stream="dead"
    )
    return EventStream(client, settings)


# --- golden bytes -------------------------------------------------------------------------

XADD = b'*5\r\n$4\r\nXADD\r\n$6\r\nevents\r\n$1\r\n*\r\n$5\r\nevent\r\n$7\r\n{"a":1}\r\n'
XADD_TRACED = (
    b'*7\r\n$4\r\nXADD\r\n$6\r\nevents\r\n$1\r\n*\r\n$5\r\nevent\r\n$7\r\n{"a":1}\r\n'
    b"$11\r\ntraceparent\r\n$55\r\n00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
)
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert wire.command(b"XADD", b"events", b"*", b"event", b'{"a":1}') == XADD
    assert wire.command(b"PING") == b"*1\r\n$4\r\nPING\r\n"
    assert wire.command(b"SET", b"k", b"") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    assert wire.bulk(b"a\r\nb", b"") == b"$4\r\na\r\nb\r\n$0\r\n\r\n"
    assert wire.MULTI == b"*1\r\n$5\r\nMULTI\r\n"
    assert wire.EXEC == b"*1\r\n$4\r\nEXEC\r\n"


@pytest.mark.parametrize("key", [b"events", b"ev%dents%b%%", "é".encode()])
def test_a_command_template_packs_what_command_packs(key: bytes) -> None:
    template = wire.command_template(b"XADD", key, b"*", b"event")
    for last in (b"", b"{}", b"%d%s", b"x" * 70000):
        assert template % (len(last), last) == wire.command(b"XADD", key, b"*", b"event", last)


def test_xadd_with_and_without_traceparent() -> None:
    stream = stream_of(redis.Redis())
    assert stream._xadd(b'{"a":1}', None) == XADD
    assert stream._xadd(b'{"a":1}', TRACEPARENT) == XADD_TRACED


async def test_appends_on_the_wire(server: ScriptedServer) -> None:
    server.answer(b"$15\r\n1700000000000-0\r\n")
    server.answer(
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$15\r\n1700000000000-1\r\n$15\r\n1700000000000-2\r\n",
        commands=4,
    )
    async with client_of(server) as client:
        stream = stream_of(client)
        await stream.add([b'{"a":1}'])
        await stream.add([b'{"a":1}', b'{"a":1}'], TRACEPARENT)
    assert server.raw == [XADD, wire.MULTI, XADD_TRACED, XADD_TRACED, wire.EXEC]


async def test_xreadgroup_with_and_without_block_and_xack(server: ScriptedServer) -> None:
    entries = (
        b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$5\r\nevent\r\n$2\r\n{}\r\n*2\r\n$3\r\n1-1\r\n*-1\r\n"
    )
    server.answer(b"*1\r\n*2\r\n$6\r\nevents\r\n" + entries)
    server.answer(b"*-1\r\n")  # nothing arrived within BLOCK
    server.answer(b":2\r\n")
    async with client_of(server) as client:
        stream = stream_of(client)
        pending = await stream.read_own_pending("c1", count=10)
        assert await stream.read_new("c1", count=5, block_ms=250) == []
        await stream.ack([b"1-0", b"1-1"])
    # A pending entry trimmed away comes back as nil fields: an entry without fields.
    assert pending == [Entry(b"1-0", {b"event": b"{}"}), Entry(b"1-1", {})]
    group = b"$10\r\nXREADGROUP\r\n$5\r\nGROUP\r\n$1\r\ng\r\n$2\r\nc1\r\n$5\r\nCOUNT\r\n"
    assert server.raw == [
        b"*9\r\n" + group + b"$2\r\n10\r\n$7\r\nSTREAMS\r\n$6\r\nevents\r\n$1\r\n0\r\n",
        b"*11\r\n"
        + group
        + b"$1\r\n5\r\n$5\r\nBLOCK\r\n$3\r\n250\r\n$7\r\nSTREAMS\r\n$6\r\nevents\r\n$1\r\n>\r\n",
        b"*5\r\n$4\r\nXACK\r\n$6\r\nevents\r\n$1\r\ng\r\n$3\r\n1-0\r\n$3\r\n1-1\r\n",
    ]


# --- reply shapes -------------------------------------------------------------------------

ENTRIES = b"*2\r\n*2\r\n$3\r\n5-0\r\n*2\r\n$5\r\nevent\r\n$1\r\na\r\n*2\r\n$3\r\n5-1\r\n*0\r\n"
XREADGROUP_RESP2 = b"*1\r\n*2\r\n$6\r\nevents\r\n" + ENTRIES
XREADGROUP_RESP3 = b"%1\r\n$6\r\nevents\r\n" + ENTRIES


def parsed(data: bytes) -> object:
    reader = hiredis.Reader()
    reader.feed(data)
    return reader.gets()


def test_resp2_and_resp3_xreadgroup_replies_give_the_same_entries() -> None:
    resp2, resp3 = parsed(XREADGROUP_RESP2), parsed(XREADGROUP_RESP3)
    assert isinstance(resp2, list) and isinstance(resp3, dict)
    expected = [[b"5-0", [b"event", b"a"]], [b"5-1", []]]
    assert wire.stream_entries(resp2) == wire.stream_entries(resp3) == expected
    assert wire.stream_entries(parsed(b"*-1\r\n")) == []  # RESP2 nil
    assert wire.stream_entries(parsed(b"_\r\n")) == []  # RESP3 null


def test_pairs() -> None:
    assert wire.pairs([b"a", b"1", b"b", b"2"]) == {b"a": b"1", b"b": b"2"}
    assert wire.pairs(None) == wire.pairs([]) == {}


@pytest.mark.parametrize("protocol", [2, 3])
async def test_read_new_over_either_protocol(server: ScriptedServer, protocol: int) -> None:
    server.answer(XREADGROUP_RESP2 if protocol == 2 else XREADGROUP_RESP3)
    async with client_of(server, protocol=protocol) as client:
        assert await stream_of(client).read_new("c", count=2, block_ms=None) == [
            Entry(b"5-0", {b"event": b"a"}),
            Entry(b"5-1", {}),
        ]


# --- replies in pieces --------------------------------------------------------------------

TRANSACTION = (
    b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n"
    b"*3\r\n$15\r\n1700000000000-0\r\n$15\r\n1700000000000-1\r\n$15\r\n1700000000000-2\r\n"
)


def mixed(protocol: int) -> bytes:
    """One reply per command: a stream read, an error, nil, an integer, an empty bulk."""
    read, nil = (XREADGROUP_RESP2, b"*-1\r\n") if protocol == 2 else (XREADGROUP_RESP3, b"_\r\n")
    return read + b"-NOGROUP No such key 'x' or consumer group 'g'\r\n" + nil + b":42\r\n$0\r\n\r\n"


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(seed: int) -> Callable[[bytes], list[bytes]]:
    def split(data: bytes) -> list[bytes]:
        rng, pieces, at = random.Random(seed), [], 0
        while at < len(data):
            size = rng.randint(1, 12)
            pieces.append(data[at : at + size])
            at += size
        return pieces

    return split


SPLITS = [
    pytest.param(lambda b: [b], id="whole"),
    pytest.param(byte_by_byte, id="byte-by-byte"),
    *(pytest.param(random_splits(seed), id=f"random-{seed}") for seed in range(4)),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("parser", ["hiredis", "python"])
@pytest.mark.parametrize("protocol", [2, 3])
async def test_replies_in_pieces_read_whole(
    server: ScriptedServer, split: Callable[[bytes], list[bytes]], parser: str, protocol: int
) -> None:
    server.split = split
    server.answer(TRANSACTION, commands=5)
    server.answer(mixed(protocol), commands=5)
    xadd = wire.command(b"XADD", b"events", b"*", b"event", b"{}")
    async with client_of(server, **with_parser(parser), protocol=protocol) as client:
        conn = await client.connection_pool.get_connection()
        assert wire.fast_path_available(conn) == (parser == "hiredis")
        await client.connection_pool.release(conn)
        ids = await wire.transaction(client, [xadd, xadd, xadd])
        replies = await wire.exchange(client, [wire.command(b"X")] * 5)
    assert ids == [b"1700000000000-0", b"1700000000000-1", b"1700000000000-2"]
    read, error, nil, number, empty = replies
    assert wire.stream_entries(read) == [[b"5-0", [b"event", b"a"]], [b"5-1", []]]
    assert isinstance(error, ResponseError) and "No such key" in str(error)
    assert (nil, number, empty) == (None, 42, b"")
    assert server.connections == 1
    assert server.writes == len(split(TRANSACTION)) + len(split(mixed(protocol)))


def with_parser(parser: str) -> dict[str, object]:
    """Options for redis-py's default parser (hiredis) or its pure-Python one, the fallback
    (which redis-py swaps for its RESP3 counterpart on a RESP3 connection)."""
    return {"parser_class": _AsyncRESP2Parser} if parser == "python" else {}


# --- failures -----------------------------------------------------------------------------

QUEUED_REFUSED = (  # a command refused while queueing: EXEC discards the transaction
    b"+OK\r\n+QUEUED\r\n-ERR wrong number of arguments for 'xadd' command\r\n"
    b"-EXECABORT Transaction discarded because of previous errors.\r\n"
)
FAILED_INSIDE = (  # queued fine, failed when EXEC ran it
    b"+OK\r\n+QUEUED\r\n+QUEUED\r\n"
    b"*2\r\n$3\r\n1-0\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
)


@pytest.mark.parametrize("parser", ["hiredis", "python"])
@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        pytest.param(QUEUED_REFUSED, ExecAbortError, "Transaction discarded", id="execabort"),
        pytest.param(FAILED_INSIDE, ResponseError, "WRONGTYPE", id="failed-inside-exec"),
        pytest.param(
            b"-ERR EXEC without MULTI\r\n" * 4, ResponseError, "EXEC without MULTI", id="no-multi"
        ),
    ],
)
async def test_a_refused_transaction_raises_and_its_connection_is_not_reused(
    server: ScriptedServer, reply: bytes, error: type, message: str, parser: str
) -> None:
    server.answer(reply, commands=4)
    server.answer(b"+PONG\r\n")
    xadd = wire.command(b"XADD", b"events", b"*", b"event", b"{}")
    async with client_of(server, **with_parser(parser)) as client:
        with pytest.raises(error, match=message) as raised:
            await wire.transaction(client, [xadd, xadd])
        if reply is QUEUED_REFUSED:  # says which command was refused
            assert "wrong number of arguments" in str(raised.value.__cause__)
        await asyncio.sleep(0.05)
        assert server.closed == 1  # disconnected, not put back in the pool as it was
        assert await wire.call(client, wire.command(b"PING")) == b"PONG"
    assert server.connections == 2


async def test_an_error_reply_is_raised_and_the_connection_kept(server: ScriptedServer) -> None:
    server.answer(b"-NOGROUP No such key\r\n")
    server.answer(b":1\r\n")
    async with client_of(server) as client:
        with pytest.raises(ResponseError, match="NOGROUP"):
            await wire.call(client, wire.command(b"XACK", b"events", b"g", b"1-0"))
        assert await wire.call(client, wire.command(b"XACK", b"events", b"g", b"1-0")) == 1
    assert server.connections == 1


async def test_a_refused_append_is_stream_unavailable(server: ScriptedServer) -> None:
    server.answer(QUEUED_REFUSED, commands=4)
    async with client_of(server) as client:
        with pytest.raises(StreamUnavailable, match="Transaction discarded"):
            await stream_of(client).add([b"{}", b"{}"])


@pytest.mark.parametrize(
    ("then", "error"), [("close", RedisConnectionError), ("stall", TimeoutError)]
)
async def test_a_reply_broken_off_midway_disconnects(
    server: ScriptedServer, then: str, error: type
) -> None:
    server.answer(TRANSACTION[:30], commands=5, then=then)
    server.answer(b"+PONG\r\n")
    xadd = wire.command(b"XADD", b"events", b"*", b"event", b"{}")
    async with client_of(server, socket_timeout=0.3) as client:
        with pytest.raises(error):
            await wire.transaction(client, [xadd, xadd, xadd])
        # The rest of the broken reply is never read as the answer to the next command.
        assert await wire.call(client, wire.command(b"PING")) == b"PONG"
    assert server.connections == 2


async def test_a_cancelled_exchange_disconnects(server: ScriptedServer) -> None:
    server.answer(b":1\r\n", then="stall")  # answered only after the cancel
    server.answer(b"+PONG\r\n")
    async with client_of(server) as client:
        task = asyncio.create_task(wire.exchange(client, [wire.command(b"BLPOP")] * 2))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wire.call(client, wire.command(b"PING")) == b"PONG"
    assert server.connections == 2


# --- the fast path ------------------------------------------------------------------------


async def test_the_hiredis_fast_path_is_in_use(server: ScriptedServer) -> None:
    # Fails when a redis-py or hiredis upgrade moves an internal the wire reads replies
    # through (the parser's `_reader`, `read_from_socket`, NOT_ENOUGH_DATA): ingest would
    # still work through redis-py's reply loop, only slower. Fix core/redis_wire.py, or pin.
    assert wire.FAST_PATH
    async with client_of(server) as client:
        conn = await client.connection_pool.get_connection()
        try:
            assert wire.fast_path_available(conn)
        finally:
            await client.connection_pool.release(conn)


async def test_the_pure_python_parser_is_the_fallback(server: ScriptedServer) -> None:
    server.answer(b"$3\r\n1-0\r\n")
    async with client_of(server, parser_class=_AsyncRESP2Parser) as client:
        conn = await client.connection_pool.get_connection()
        try:
            assert not wire.fast_path_available(conn)
        finally:
            await client.connection_pool.release(conn)
        assert await wire.call(client, XADD) == b"1-0"
