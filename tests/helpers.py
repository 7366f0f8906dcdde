"""Builders and process helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from queueflow.core import store
from queueflow.core.config import Settings, service_environment
from queueflow.core.events import EventWindow, decode_event, encode_event
from queueflow.core.serving import make_server
from queueflow.embedded import free_port


def event(**fields: Any) -> dict[str, Any]:
    """A valid event body; keyword arguments override or (with None) drop fields."""
    body = {
        "site_id": "site-1",
        "event_type": "page_view",
        "path": "/",
        "user_id": "user-1",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


@contextlib.asynccontextmanager
async def serve(
    app: Any, settings: Any = None, tracing: Any = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Run an ASGI app under uvicorn on a real loopback port; yield a client for it."""
    port = free_port()
    server = make_server(app, "127.0.0.1", port, settings, tracing=tracing)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


class Service:
    """A real `queueflow` process on a free port, stopped (SIGTERM) at exit."""

    def __init__(
        self, command: str, env: dict[str, str], *args: str, log_file: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        stdout = None if log_file is None else log_file.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "queueflow",
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            env={**os.environ, "QUEUEFLOW_LOG_LEVEL": "warning", **env},
            stdout=stdout,
        )
        if stdout is not None:
            stdout.close()  # the child has its own descriptor

    def log_lines(self) -> list[dict]:
        """The JSON log lines written so far (needs log_file)."""
        assert self.log_file is not None
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line]

    def wait_healthy(self, timeout: float = 20) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited early with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"not healthy after {timeout}s")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as on an OOM kill or a node loss."""
        self.proc.kill()
        self.proc.wait()

    def metric(self, name: str) -> float:
        """One sample's value from this service's /metrics (0 when absent)."""
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a service process for a test: its servers and its own stream and
    group names (the rest is each test's, or the defaults)."""
    only = ("redis_url", "database_url", "stream", "group", "dead_letter_stream")
    return service_environment(settings, only=only, secrets=True)


TIMEZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


def workload(n: int, seed: int = 7) -> list[dict]:
    """Events over two sites and three UTC days (sent with mixed offsets), with resends."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events: list[dict] = []
    for _ in range(n):
        if events and rng.random() < 0.1:
            events.append(dict(rng.choice(events)))  # the client resends: same event_id
            continue
        ts = now - timedelta(days=rng.choice([0, 1, 2]), minutes=rng.randint(0, 600))
        events.append(
            {
                "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "site_id": rng.choice(["shop", "blog"]),
                "event_type": rng.choice(["page_view"] * 4 + ["click", "signup"]),
                "path": rng.choice(["/", "/pricing", "/docs", "/docs/start", "/blog/ü"]),
                "user_id": f"user-{rng.randint(1, 300)}",
                "timestamp": ts.astimezone(rng.choice(TIMEZONES)).isoformat(),
            }
        )
    return events


def send(url: str, events: list[dict[str, Any]], batch: int = 200) -> None:
    """POST events in batches to a running ingest; every batch must be accepted."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(0, len(events), batch):
            response = client.post("/events", json=events[i : i + batch])
            assert response.status_code == 202, response.text


async def stored_stats(database_url: str, keys: Iterable[tuple[str, date]]) -> dict:
    """What the aggregate tables say for each (site, day), shaped like expected_stats."""
    conn = await asyncpg.connect(database_url)
    try:
        found = {}
        for site, day in keys:
            totals = await conn.fetchrow(store.RANGE_TOTALS, site, day, day)
            paths = await conn.fetch(store.TOP_VALUES, site, day, day, "path", 1_000_000)
            found[(site, day)] = {
                "total_views": totals["views"],
                "unique_users": totals["users"],
                "top_paths": [{"path": p["value"], "views": p["events"]} for p in paths],
            }
        return found
    finally:
        await conn.close()


def wait_until_exact(
    database_url: str, events: list[dict[str, Any]], timeout_s: float = 60
) -> float:
    """Poll the aggregates until they equal the naive recount; returns the seconds it took."""
    expected = expected_stats(events)
    started = time.monotonic()
    while True:
        actual = asyncio.run(stored_stats(database_url, expected))
        if actual == expected:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            assert actual == expected


def expected_stats(events: Iterable[dict[str, Any]]) -> dict[tuple[str, date], dict[str, Any]]:
    """Naive recount: each event_id once per site; views are page_views; users distinct over
    all events."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        seen.setdefault((e["site_id"], e["event_id"]), e)
    views: Counter[tuple[str, date]] = Counter()
    paths: dict[tuple[str, date], Counter[str]] = defaultdict(Counter)
    users: dict[tuple[str, date], set[str]] = defaultdict(set)
    for e in seen.values():
        ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        day = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC).date()
        key = (e["site_id"], day)
        users[key].add(e["user_id"])
        if e["event_type"] == "page_view":
            views[key] += 1
            paths[key][e["path"]] += 1
    return {
        key: {
            "total_views": views[key],
            "unique_users": len(users[key]),
            "top_paths": [
                {"path": p, "views": v}
                for p, v in sorted(paths[key].items(), key=lambda pv: (-pv[1], pv[0].encode()))
            ],
        }
        for key in users
    }


@contextlib.asynccontextmanager
async def running(consumer: Any) -> AsyncIterator[None]:
    """Run a worker Consumer in this event loop; stop it (finishing its batch) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polling another process's state
            await asyncio.sleep(0.05)


def payload(**fields: Any) -> bytes:
    """A stream entry's payload for a valid event."""
    return encode_event(decode_event(json.dumps(event(**fields)).encode(), EventWindow(30)))


async def group_state(r: Any, settings: Any) -> tuple[int, int] | None:
    """(lag, pending) of the test's consumer group, or None before a worker created it."""
    groups = await r.xinfo_groups(settings.stream) if await r.exists(settings.stream) else []
    return (groups[0]["lag"], groups[0]["pending"]) if groups else None


class Served:
    """An app under uvicorn in a thread with its own event loop, for synchronous tests
    (schemathesis, hypothesis) that call it over a real port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__ / __exit__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self.app) as client:
            self.url = str(client.base_url)
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Served:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self.url:
            raise RuntimeError("the app did not start") from self._error
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._error is not None:
            raise self._error
