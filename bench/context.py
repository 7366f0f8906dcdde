"""What every step is given: the servers, the command line, and what steps share: the
services' settings and environment, starting a service, settling Valkey, emptying the store,
and the stream as the project's domain API reads it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
import psutil
import redis

from bench.figures import cpu_seconds
from bench.processes import Service, running, wait_until
from queueflow.core.config import Settings, load_settings, service_environment
from queueflow.core.store import ALL_AGGREGATES
from queueflow.core.stream import EventStream, StreamStats, connect
from queueflow.embedded import EmbeddedServer

STREAM, GROUP = "bench_events", "bench_workers"
TABLES = f"events, event_ids, site_users, {ALL_AGGREGATES}"
# What every service the bench starts runs with, beside the servers' URLs.
SETTINGS: dict[str, Any] = {
    "stream": STREAM,
    "group": GROUP,
    "log_level": "warning",
    "backlog_limit": 10**9,  # ingest never refuses for backlog while the bench loads it
}


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a process the bench starts: this one's, plus every setting set
    explicitly in `settings` as the variable it is read from, plus `extra` (not settings,
    such as OTEL_*)."""
    rendered = service_environment(settings, only=settings.model_fields_set, secrets=True)
    return {**os.environ, **rendered, **extra}


class StreamView:
    """The bench's stream through queueflow.core.stream.EventStream (backlog, stats), called
    from the bench's synchronous code on one event loop of its own."""

    def __init__(self, settings: Settings) -> None:
        self._runner = asyncio.Runner()
        self._stream = self._runner.run(self._open(settings))

    @staticmethod
    async def _open(settings: Settings) -> EventStream:
        return EventStream(connect(settings.redis_dsn(), timeout_s=5), settings)

    def backlog(self) -> int:
        """Entries the group has not finished: undelivered plus pending."""
        return self._runner.run(self._stream.backlog())

    def stats(self) -> StreamStats:
        return self._runner.run(self._stream.stats())

    def close(self) -> None:
        self._runner.run(self._stream.client.aclose())
        self._runner.close()


class Bench:
    """The embedded Valkey and PostgreSQL (URLs, processes) and the parsed command line."""

    def __init__(
        self, args: argparse.Namespace, valkey: EmbeddedServer, postgres: EmbeddedServer
    ) -> None:
        self.args = args
        self.redis_url, self.database_url = valkey.url, postgres.url
        self.valkey = psutil.Process(valkey.process.pid)
        self.postgres = psutil.Process(postgres.process.pid)
        self.redis = redis.from_url(self.redis_url)
        self.stream = StreamView(self.settings())

    def close(self) -> None:
        self.stream.close()
        self.redis.close()

    def settings(self, **overrides: Any) -> Settings:
        """The services' settings: SETTINGS and the servers' URLs, with `overrides`."""
        return load_settings(
            **{
                "redis_url": self.redis_url,
                "database_url": self.database_url,
                **SETTINGS,
                **overrides,
            }
        )

    def migrate(self) -> None:
        command = [sys.executable, "-m", "queueflow", "migrate"]
        subprocess.run(command, check=True, env=service_env(self.settings()))

    @contextlib.contextmanager
    def service(
        self,
        command: str,
        *,
        quiet: bool = False,
        extra_env: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> Iterator[Service]:
        """`queueflow <command>` with the bench's settings and `settings`, once /readyz says
        Valkey and PostgreSQL are reachable; stopped at exit."""
        env = service_env(self.settings(**settings), **(extra_env or {}))
        stdout = subprocess.DEVNULL if quiet else None
        with running(command, env, ready="/readyz", stdout=stdout) as service:
            yield service

    def settle(self, *streams: str) -> None:
        """Delete the streams and compact the AOF, waiting until it is done: every load run
        starts from the same Redis, not inside a rewrite the previous run's writes set off
        (a fork and a second process on the same two cores)."""
        self.redis.delete(*streams)
        if self.redis.config_get("appendonly")["appendonly"] != "yes":
            return
        with contextlib.suppress(redis.ResponseError):  # "already in progress"
            self.redis.bgrewriteaof()
        wait_until(self._aof_settled, 300, what="AOF rewrite ended")

    def _aof_settled(self) -> bool:
        info = self.redis.info("persistence")
        return not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

    def reset(self) -> None:
        """An empty stream and empty tables; PostgreSQL writes out what the last step dirtied
        now rather than from its checkpointer during the next step's load."""
        self.settle(STREAM)
        asyncio.run(self.sql(f"TRUNCATE {TABLES}"))
        asyncio.run(self.sql("CHECKPOINT"))

    async def sql(self, statement: str) -> object:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    def postgres_cpu(self) -> float:
        """CPU seconds so far of PostgreSQL: all its processes alive now."""
        return sum(map(cpu_seconds, [self.postgres, *self.postgres.children()]))

    def valkey_cpu(self) -> float:
        return cpu_seconds(self.valkey)
