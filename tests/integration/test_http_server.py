"""The HTTP server every service shares, against hostile and odd clients over raw sockets: idle,
slow and oversized requests, and clients that do not read their answers or pipeline without end,
are cut off in bounded time and memory, pipelined requests are answered in order, HTTP/1.0
clients never get chunked answers, a half-closed client still gets its answer, and a route's
exception is logged once with its frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from queueflow.core import observability as obs
from queueflow.core.config import Settings, load_settings
from queueflow.embedded import free_port
from queueflow.ingest.app import create_app as create_ingest
from queueflow.reporting.app import create_app as create_reporting
from tests.helpers import Service, event, serve, service_env, until

SHORT = {
    "http_header_timeout_s": 0.5,
    "http_body_timeout_s": 0.5,
    "http_keepalive_timeout_s": 0.5,
    "http_max_header_bytes": 4096,
}


class Echo:
    """Answers the size of the body it read, in two body messages and without Content-Length
    (as a streaming app does); `receive()` seeing a disconnect is recorded."""

    route_paths = ("/",)

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read %d" % size, "more_body": True})
        await send({"type": "http.response.body", "body": b" bytes"})


@contextlib.asynccontextmanager
async def listening(app, settings: Settings) -> AsyncIterator[int]:
    """The app served by make_server under `settings`; yields its port."""
    async with serve(app, settings) as client:
        yield client.base_url.port


async def exchange(port: int, data: bytes, *, half_close: bool = False, wait: float = 5) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def head(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(status line, lower-cased headers, body) of one raw HTTP response."""
    top, _, body = response.partition(b"\r\n\r\n")
    status, *lines = top.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    return status, headers, body


def request(method: str, path: str, body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_idle_connections_are_closed_after_the_header_timeout() -> None:
    async with listening(Echo(), load_settings(**SHORT)) as port:
        started = time.monotonic()
        answers = await asyncio.gather(*(exchange(port, b"") for _ in range(20)))
        elapsed = time.monotonic() - started
    assert answers == [b""] * 20  # closed, silently: nothing was asked
    assert 0.4 < elapsed < 2.5


async def test_slowloris_headers_are_answered_408_and_closed() -> None:
    async with listening(Echo(), load_settings(**SHORT)) as port:
        answer, elapsed = await trickle(port, b"GET / HTTP/1.1\r\nHost: test\r\n", b"X" * 100)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert elapsed < 2.5


async def test_slow_body_is_cut_off_and_nothing_is_enqueued(settings, redis_client) -> None:
    rejected = obs.INGEST_REJECTED.labels("disconnected")
    before = rejected._value.get()

    async def ingest_rejected_it() -> bool:  # its receive() saw the disconnect
        return rejected._value.get() > before

    async with listening(create_ingest(settings), settings.model_copy(update=SHORT)) as port:
        body = json.dumps(event(event_id="slow-body")).encode()
        whole = request("POST", "/event", body)
        answer, elapsed = await trickle(port, whole[: -len(body) + 10], body[10:-1])
        await until(ingest_rejected_it, 5)
        assert await redis_client.xlen(settings.stream) == 0
        # The same request sent at once is accepted, into the stream checked above.
        assert head(await exchange(port, whole, half_close=True))[0].startswith(b"HTTP/1.1 202 ")
    assert answer == b""
    assert elapsed < 2.5
    assert await redis_client.xlen(settings.stream) == 1


async def trickle(port: int, first: bytes, rest: bytes) -> tuple[bytes, float]:
    """Send `first`, then `rest` a byte every 50 ms until the server closes the connection;
    returns what it answered and the seconds from `first` to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    started = time.monotonic()
    answer = asyncio.create_task(reader.read())
    with contextlib.suppress(ConnectionError):
        for byte in rest:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
    try:
        return await asyncio.wait_for(answer, 5), time.monotonic() - started
    finally:
        writer.close()


async def test_header_limit_counts_headers_not_bodies_or_pipelined_requests() -> None:
    async with listening(Echo(), load_settings(**SHORT)) as port:
        fits = b"GET / HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * 3900 + b"\r\n\r\n"
        assert head(await exchange(port, fits, half_close=True))[0] == b"HTTP/1.1 200 OK"
        too_large = fits.replace(b"a" * 3900, b"a" * 4100)
        status, headers, _ = head(await exchange(port, too_large))
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert headers[b"connection"] == b"close"
        # Small headers with a 60 KB body in the same read, then two pipelined requests.
        big_body = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 60000\r\n\r\n" + b"b" * 60000
        answer = await exchange(port, big_body + fits + fits, half_close=True)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert b"read 60000\r\n" in answer


async def test_a_10mb_header_gets_431_and_no_memory(settings) -> None:
    env = {**service_env(settings), "QUEUEFLOW_HTTP_MAX_HEADER_BYTES": "8192"}
    ingest = Service("ingest", env).wait_healthy()
    try:
        port = ingest.port
        # The setting reaches `queueflow ingest`: 8000 bytes of headers pass, 8200 do not.
        pad = request("GET", "/healthz").replace(b"\r\n\r\n", b"\r\nX-Pad: ")
        fits = pad + b"a" * (8000 - len(pad)) + b"\r\n\r\n"
        assert head(await exchange(port, fits, half_close=True))[0] == b"HTTP/1.1 200 OK"
        assert head(await exchange(port, fits.replace(b"a" * 100, b"a" * 300, 1)))[0].startswith(
            b"HTTP/1.1 431 "
        )
        process = psutil.Process(ingest.proc.pid)
        before = process.memory_info().rss
        answers = await asyncio.gather(*(_send_10mb_header(port) for _ in range(10)))
        grown = process.memory_info().rss - before
    finally:
        assert ingest.stop() == 0
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert grown < 10 * 2**20, f"RSS grew {grown / 2**20:.1f} MB for 10 x 10 MB of headers"


async def _send_10mb_header(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"a" * 65536
    with contextlib.suppress(ConnectionError):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
        for _ in range(160):  # 10 MB, never more than 64 KB buffered here
            writer.write(chunk)
            await writer.drain()
    try:  # the answer's head only: the server may reset the connection once it has lingered
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with listening(Echo(), load_settings(**SHORT)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # the connection is reused while it is busy
            writer.write(request("GET", "/"))
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status.startswith(b"HTTP/1.1 200 OK")
            await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        elapsed = time.monotonic() - started
        writer.close()
    assert 0.3 < elapsed < 2


async def test_http10_answers_carry_content_length_never_chunked(settings) -> None:
    async with (
        listening(create_ingest(settings), settings) as ingest,
        listening(create_reporting(settings), settings) as reporting,
        listening(Echo(), settings) as echo,
    ):
        answers = {
            "event": await exchange(
                ingest, request("POST", "/event", json.dumps(event()).encode(), "1.0")
            ),
            "405": await exchange(ingest, request("GET", "/event", version="1.0")),
            "healthz": await exchange(reporting, request("GET", "/healthz", version="1.0")),
            "streamed": await exchange(echo, request("GET", "/", version="1.0")),
        }
        # HTTP/1.1 keeps its chunked answers for bodies of unknown length.
        chunked = head(await exchange(echo, request("GET", "/"), half_close=True))[1]
    for name, answer in answers.items():
        _, headers, body = head(answer)
        assert b"transfer-encoding" not in headers, name
        assert int(headers[b"content-length"]) == len(body), name
    assert head(answers["event"])[0].startswith(b"HTTP/1.1 202 ")
    assert head(answers["405"])[0].startswith(b"HTTP/1.1 405 ")
    assert head(answers["streamed"])[2] == b"read 0 bytes"
    assert chunked[b"transfer-encoding"] == b"chunked"


async def test_half_closed_client_gets_its_answer(settings, redis_client) -> None:
    async with listening(create_ingest(settings), settings) as port:
        body = json.dumps(event(event_id="half-closed")).encode()
        answer = await exchange(port, request("POST", "/event", body), half_close=True)
    status, headers, reply = head(answer)
    assert status.startswith(b"HTTP/1.1 202 ")
    assert headers[b"connection"] == b"close"
    assert b'"event_id":"half-closed"' in reply
    assert await redis_client.xlen(settings.stream) == 1


# Clients that do not read their answers, or pipeline without end. A 4 KB receive buffer
# still lets the kernel take about 3 MB of answers (the server's send buffer grows): the
# answers here are larger than that, or (/metrics, a few KB) many.


class Large(Echo):
    """Answers `size` bytes in parts of `part` (each send waits while the client's buffers are
    full); `ended` is when its last send returned."""

    def __init__(self, size: int, part: int) -> None:
        super().__init__()
        self.size, self.part, self.ended = size, part, 0.0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % self.size)],
            }
        )
        for sent in range(0, self.size, self.part):
            more = sent + self.part < self.size
            await send({"type": "http.response.body", "body": b"x" * self.part, "more_body": more})
        self.ended = time.monotonic()


def held_sockets(pid: int, port: int) -> int:
    """How many connections process `pid` holds on its listening `port`."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
    )


async def until_held(pid: int, port: int, count: int, timeout_s: float) -> None:
    async def held() -> bool:
        return held_sockets(pid, port) == count

    await until(held, timeout_s)


async def not_reading(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a 4 KB receive buffer that sends `data` (all of it, whatever the
    server reads) and reads nothing until the caller does."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(data)
    return reader, writer


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """What the connection still delivers, up to its end (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_client_that_does_not_read_its_answer_is_cut_off() -> None:
    # 8 MB answers: more than the kernel's socket buffers take for a client that reads nothing.
    app = Large(8 * 2**20, 2**20)
    async with listening(app, load_settings(**SHORT)) as port:
        clients = [await not_reading(port, request("GET", "/")) for _ in range(5)]
        started = time.monotonic()
        # Generous bounds: a loaded 2-core CI machine is slow; the old code held them forever.
        await until_held(os.getpid(), port, 0, 20)
        elapsed = time.monotonic() - started
        got = [await read_all(reader) for reader, _ in clients]
        for _, writer in clients:
            writer.close()
        # The app was not stuck either: its sends returned once the connection was gone.
        assert 0 < app.ended - started < elapsed + 0.5
    assert 0.4 < elapsed < 10
    assert all(len(answer) < app.size for answer in got)


async def test_a_client_that_reads_slowly_but_steadily_gets_its_answer() -> None:
    # 6 MB in 64 KB parts, read at about 3 MB/s: more than the kernel's buffers take (about
    # 3 MB), so the server waits for the client many times, and longer than the send timeout
    # in all, but never that long at a time.
    app = Large(6 * 2**20, 2**16)
    async with listening(app, load_settings(**SHORT)) as port:
        reader, writer = await not_reading(port, request("GET", "/", version="1.0"))
        started = time.monotonic()
        answer = b""
        while chunk := await asyncio.wait_for(reader.read(2**16), 5):
            answer += chunk
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        writer.close()
    assert head(answer)[0] == b"HTTP/1.1 200 OK"
    assert len(head(answer)[2]) == app.size
    assert elapsed > 0.5  # the answer took longer than the send timeout


async def test_pipelined_requests_are_all_answered_in_order() -> None:
    # More requests than are parsed ahead (16), with bodies and LF-full bodies to slice, in one
    # write; then a few, and a keep-alive client sending one request at a time.
    bodies = [b"a" * (37 * i) if i % 2 else b"line\n" * (11 * i) for i in range(60)]
    burst = b"".join(request("POST", "/", body) if body else request("GET", "/") for body in bodies)
    async with listening(Echo(), load_settings(**SHORT)) as port:
        many = await exchange(port, burst, half_close=True)
        few = await exchange(port, request("GET", "/") * 3, half_close=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        one_by_one = b""
        for body in bodies:
            writer.write(request("POST", "/", body))
            one_by_one += await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.close()
    expected = [b"read %d bytes" % len(body) for body in bodies]
    assert _bodies(many) == expected
    assert _bodies(few) == [b"read 0 bytes"] * 3
    assert _bodies(one_by_one) == expected


def _bodies(answers: bytes) -> list[bytes]:
    """The bodies of chunked answers from Echo: b'read N bytes' each, in order."""
    return [
        b"read " + part.split(b"\r\n", 1)[0] + b" bytes" for part in answers.split(b"read ")[1:]
    ]


async def test_a_pipelined_flood_that_is_never_read_is_cut_off_in_bounded_memory(settings) -> None:
    env = {
        **service_env(settings),
        "QUEUEFLOW_HTTP_BODY_TIMEOUT_S": "0.5",
        "QUEUEFLOW_HTTP_KEEPALIVE_TIMEOUT_S": "0.5",
    }
    ingest = Service("ingest", env).wait_healthy()
    try:
        port, process = ingest.port, psutil.Process(ingest.proc.pid)
        before = process.memory_info().rss
        flood = request("GET", "/metrics") * 5000
        clients = [await not_reading(port, flood) for _ in range(3)]
        started, peak = time.monotonic(), before
        await until_held(process.pid, port, len(clients), 5)
        while held_sockets(process.pid, port) and time.monotonic() - started < 10:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        for _, writer in clients:
            writer.close()
        # The service still answers others at once.
        healthz = await exchange(port, request("GET", "/healthz"), half_close=True, wait=2)
        assert head(healthz)[0] == b"HTTP/1.1 200 OK"
    finally:
        assert ingest.stop() == 0
    assert elapsed < 3, "a non-reading pipelining client still held its connection"
    grown = peak - before
    assert grown < 4 * 2**20, f"RSS grew {grown / 2**20:.1f} MB for 3 x 5000 pipelined requests"


SERVER = """
import asyncio, sys
from fastapi import FastAPI
from queueflow.core.config import load_settings
from queueflow.core.observability import configure_logging
from queueflow.core.serving import make_server, serve_until, stop_on_signals

configure_logging("info", sys.argv[1])
api = FastAPI()

@api.get("/boom")
async def boom():
    secret = "hunter2"  # a local variable: it must not be logged
    raise ValueError("boom \\x1b[31mred")

class App:  # /raw is a plain ASGI endpoint that raises before answering
    route_paths = {"/boom", "/raw"}
    async def __call__(self, scope, receive, send):
        if scope.get("path") == "/raw":
            raise KeyError("raw")
        await api(scope, receive, send)

async def main():
    server = make_server(
        App(), "127.0.0.1", int(sys.argv[2]), load_settings(), access_log=sys.argv[3] == "on"
    )
    await serve_until(server, stop_on_signals())

asyncio.run(main())
"""


@pytest.mark.parametrize(("fmt", "access_log"), [("json", "off"), ("console", "on")])
def test_route_exception_is_logged_once_with_its_frames(tmp_path: Path, fmt, access_log) -> None:
    script, log_file, port = tmp_path / "server.py", tmp_path / "server.log", free_port()
    script.write_text(SERVER)
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), fmt, str(port), access_log],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                boom = httpx.get(f"{url}/boom", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        raw = httpx.get(f"{url}/raw", timeout=5)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert (boom.status_code, raw.status_code, raw.text) == (500, 500, "Internal Server Error")
    text = log_file.read_text()
    assert "Exception in ASGI application" not in text  # one line per error, not two
    assert "hunter2" not in text  # frames without their local variables
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        errors = [line for line in lines if line["level"] == "error"]
        assert [(e["event"], e["path"], e["status"]) for e in errors] == [
            ("request", "/boom", 500),
            ("request", "/raw", 500),
        ]
        for error, function in zip(errors, ("boom", "__call__"), strict=True):
            [exception] = error["exception"][-1:]
            assert function in [frame["name"] for frame in exception["frames"]]
            assert all("locals" not in frame for frame in exception["frames"])
        assert errors[0]["exception"][-1]["exc_value"] == "boom \x1b[31mred"
    else:
        assert text.count("Traceback (most recent call last)") == 2
        assert "in boom" in text and "ValueError: boom \\x1b[31mred" in text
        assert "KeyError: 'raw'" in text
