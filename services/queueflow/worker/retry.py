"""Retrying transient failures: capped exponential backoff with jitter, logged once per outage."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from redis.exceptions import RedisError, ResponseError

from queueflow.core import observability as obs

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Stopping(Exception):
    """Asked to stop while a dependency is down: give up, leaving entries pending."""


class DataRejected(Exception):
    """PostgreSQL refused a row for what it holds (SQLSTATE class 22 or 23)."""


def is_data_error(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in ("22", "23")


class Backoff:
    """Capped exponential backoff with full jitter; logs when an outage starts and ends."""

    def __init__(self, what: str, stop: asyncio.Event, base_s: float = 0.05, cap_s: float = 5.0):
        self.what, self.stop, self.base_s, self.cap_s = what, stop, base_s, cap_s
        self.failures = 0

    async def failed(self, exc: BaseException) -> None:
        """Wait before the next try; raise Stopping if a stop is asked for meanwhile."""
        if self.failures == 0:
            log.warning(f"{self.what} unavailable, retrying", error=repr(exc))
        self.failures += 1
        obs.WORKER_RETRIES.labels(self.what).inc()
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2**self.failures))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        if self.stop.is_set():
            raise Stopping(f"{self.what} unavailable") from exc

    def succeeded(self) -> None:
        if self.failures:
            log.info(f"{self.what} available again", failed_attempts=self.failures)
            self.failures = 0


class Retrying:
    """Runs Redis and PostgreSQL calls until they succeed. Only a PostgreSQL data error
    escapes (as DataRejected): a lost connection, a restart, a deadlock or a missing table
    heals by waiting, and whatever is pending stays unacknowledged meanwhile."""

    def __init__(
        self, stop: asyncio.Event, regroup: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.redis_backoff = Backoff("redis", stop)
        self.postgres_backoff = Backoff("postgres", stop)
        self.regroup = regroup

    async def redis(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                result = await call()
            except ResponseError as exc:
                if "NOGROUP" in str(exc) and self.regroup is not None:
                    # Redis lost the stream or the group (restarted without persistence, or
                    # deleted by hand): create them again rather than retry in vain.
                    log.warning("stream or consumer group missing; creating it", error=str(exc))
                    await self.redis(self.regroup)
                    continue
                await self.redis_backoff.failed(exc)
                continue
            except (RedisError, OSError, TimeoutError) as exc:
                await self.redis_backoff.failed(exc)
                continue
            self.redis_backoff.succeeded()
            return result

    async def postgres(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                result = await call()
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
                TimeoutError,
            ) as exc:
                if is_data_error(exc):
                    raise DataRejected(str(exc)) from exc
                await self.postgres_backoff.failed(exc)
                continue
            self.postgres_backoff.succeeded()
            return result
