"""Builders and process helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

import httpx

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
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run an ASGI app under uvicorn on a real loopback port; yield a client for it."""
    port = free_port()
    server = make_server(app, "127.0.0.1", port)
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

    def __init__(self, command: str, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
        )

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


def service_env(settings: Any) -> dict[str, str]:
    return {
        "REDIS_URL": str(settings.redis_url),
        "DATABASE_URL": str(settings.database_url),
        "QUEUEFLOW_STREAM": settings.stream,
        "QUEUEFLOW_GROUP": settings.group,
        "QUEUEFLOW_DEAD_LETTER_STREAM": settings.dead_letter_stream,
    }


def expected_stats(events: Iterable[dict[str, Any]]) -> dict[tuple[str, date], dict[str, Any]]:
    """Naive recount: each event_id once; views are page_views; users distinct over all events."""
    seen: dict[str, dict[str, Any]] = {}
    for e in events:
        seen.setdefault(e["event_id"], e)
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
