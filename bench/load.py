"""Load for the bench: event workloads, raw XADD, preloading a backlog and HTTP load (wrk
where installed, else a raw-socket asyncio client, which the results name)."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx

from queueflow.core.event_ids import new_event_ids
from queueflow.core.events import Event, encode_event

CONNECTIONS = 50


def events(count: int, seed: int = 1) -> list[Event]:
    """A realistic mix: a few sites, 50 paths, 5,000 users, today's and yesterday's timestamps."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    ids = new_event_ids(count)
    return [
        Event(
            site_id=f"site-{rng.randint(1, 5)}",
            event_type=rng.choice(("page_view", "page_view", "page_view", "click")),
            path=f"/page/{rng.randint(1, 50)}",
            user_id=f"user-{rng.randint(1, 5000)}",
            timestamp=now - timedelta(seconds=rng.randint(0, 86_400)),
            event_id=ids[i],
        )
        for i in range(count)
    ]


def body(kind: str) -> bytes:
    """The request body wrk or the fallback client sends: one event or an array of 100."""
    items = [_client_json(e) for e in events(1 if kind == "single" else 100, seed=2)]
    return json.dumps(items[0] if kind == "single" else items).encode()


def _client_json(event: Event) -> dict:
    data = json.loads(encode_event(event))
    del data["event_id"]  # the server assigns ids, as for most clients
    return data


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _redis_socket(redis_url: str) -> socket.socket:
    hostport = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return socket.create_connection((host, int(port)))


def _send_xadds(sock: socket.socket, data: bytes, count: int) -> None:
    """Send `count` pipelined XADDs and wait for their replies (each a bulk string: two CRLFs)."""
    sock.sendall(data)
    received = b""
    while received.count(b"\r\n") < 2 * count:
        received += sock.recv(1 << 20)


def xadd_rate(redis_url: str, payload: bytes, depth: int, total: int = 100_000) -> float:
    """XADDs per second from one raw connection, `depth` commands per round trip."""
    sock = _redis_socket(redis_url)
    command = _resp(b"XADD", b"bench_xadd", b"*", b"event", payload) * depth
    started = time.monotonic()
    for _ in range(total // depth):
        _send_xadds(sock, command, depth)
    sock.close()
    return total / (time.monotonic() - started)


def preload(redis_url: str, stream: str, count: int) -> None:
    """Fill the stream with `count` distinct events, pipelined 1,000 at a time."""
    sock = _redis_socket(redis_url)
    for data, size in _preload_chunks(stream, count):
        _send_xadds(sock, data, size)
    sock.close()


@functools.cache
def _preload_chunks(stream: str, count: int) -> list[tuple[bytes, int]]:
    """The XADDs of a preload, built once: every drain run replays the same events."""
    chunks = []
    for start in range(0, count, 1000):
        chunk = events(min(1000, count - start), seed=start)
        data = b"".join(
            _resp(b"XADD", stream.encode(), b"*", b"event", encode_event(e)) for e in chunk
        )
        chunks.append((data, len(chunk)))
    return chunks


def http(url: str, kind: str, seconds: float, connections: int = CONNECTIONS) -> dict:
    """Closed-loop load at `connections` concurrency: requests/s, p50/p99 ms, errors."""
    if shutil.which("wrk"):
        return _wrk(url, body(kind), seconds, connections)
    return asyncio.run(_python_load(url, body(kind), seconds, connections))


def http_split(urls: list[str], kind: str, seconds: float) -> dict:
    """The same CONNECTIONS spread over several servers at once: their summed requests/s and
    the worst p50/p99 (how two ingest processes compare with one under the same load)."""
    each = CONNECTIONS // len(urls)
    with ThreadPoolExecutor(len(urls)) as pool:
        runs = list(pool.map(lambda url: http(url, kind, seconds, each), urls))
    return {
        "tool": f"{runs[0]['tool']} on each of {len(urls)} servers",
        "requests_per_s": sum(r["requests_per_s"] for r in runs),
        "p50_ms": max(r["p50_ms"] for r in runs),
        "p99_ms": max(r["p99_ms"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
    }


def _wrk(url: str, payload: bytes, seconds: float, connections: int) -> dict:
    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{payload.decode()}]==]\n"
    )
    # wrk takes whole seconds only: "-d2.0s" is refused.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        argv += ["-s", lua.name, url]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "tool": f"wrk -t1 -c{connections}",
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out)[1]),
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out)[1]),
        "errors": errors,
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return round(float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 3)


async def _python_load(url: str, payload: bytes, seconds: float, connections: int) -> dict:
    host_port, path = url.split("://", 1)[1].split("/", 1)
    host, port = host_port.split(":")
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < deadline:
            sent = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])
            await reader.readexactly(length)
            latencies.append(time.monotonic() - sent)
            errors += not head.startswith(b"HTTP/1.1 2")
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "tool": f"python asyncio raw sockets, {connections} connections (wrk not installed)",
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "errors": errors,
    }


def steady(url: str, events_per_s: float, seconds: float) -> None:
    """Open-loop load: 100-event batches at a fixed rate, for freshness and the soak."""
    asyncio.run(_steady(url, events_per_s, seconds))


async def _steady(url: str, events_per_s: float, seconds: float) -> None:
    interval = 100 / events_per_s
    batches = [[_client_json(e) for e in events(100, seed=s)] for s in range(20)]
    async with httpx.AsyncClient(timeout=10) as client:
        tasks = []
        started = time.monotonic()
        for i in range(int(seconds / interval)):
            await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
            tasks.append(asyncio.create_task(client.post(url, json=batches[i % len(batches)])))
        responses = await asyncio.gather(*tasks)
    refused = sum(r.status_code != 202 for r in responses)
    if refused:
        raise RuntimeError(f"{refused} of {len(responses)} batches were refused")
