"""Retrying transient failures: capped exponential backoff with jitter, logged once per outage,
and told apart from a batch that PostgreSQL keeps refusing for what it holds."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from queueflow.core import observability as obs

log = structlog.get_logger(__name__)
T = TypeVar("T")

POSTGRES_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# SQLSTATEs that heal by waiting whatever the statement holds: connection (08), transaction
# rollback (40: serialization, deadlock), insufficient resources (53: disk full, too many
# connections), operator intervention (57P: shutdown, cannot connect now), system error (58),
# and locks not available (55P03, 55006). A cancelled statement (57014, a statement_timeout)
# is not among them: a batch that always times out while the empty one does not is isolated.
TRANSIENT_SQLSTATES = ("08", "40", "53", "57P", "58", "55P03", "55006")
# A statement PostgreSQL refuses this many times in a row, with an error that is not
# transient, is checked against the probe (the same statement with no rows).
REFUSALS_BEFORE_PROBE = 3


class Stopping(Exception):
    """Asked to stop while a dependency is down: give up, leaving entries pending."""


class DataRejected(Exception):
    """PostgreSQL refused these rows for what they hold: a data error (SQLSTATE class 22 or
    23), or any persistent error that the same statement without the rows does not raise
    (54000, a key over the B-tree row limit, is one)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}: {message}")
        self.sqlstate = sqlstate


def sqlstate_of(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None


def is_data_error(exc: BaseException) -> bool:
    return (sqlstate_of(exc) or "")[:2] in ("22", "23")


def is_refusal(exc: BaseException) -> bool:
    """PostgreSQL answered, and refused for a reason that waiting does not obviously heal."""
    sqlstate = sqlstate_of(exc)
    return sqlstate is not None and not sqlstate.startswith(TRANSIENT_SQLSTATES)


def describe(exc: BaseException) -> str:
    sqlstate = sqlstate_of(exc)
    detail = str(exc) or type(exc).__name__
    return f"SQLSTATE {sqlstate}: {detail}" if sqlstate else f"{type(exc).__name__}: {detail}"


class Backoff:
    """Capped exponential backoff with full jitter; logs when an outage starts and ends, and
    says while it lasts what it is retrying on (readiness, the retrying gauge)."""

    def __init__(self, what: str, stop: asyncio.Event, base_s: float = 0.05, cap_s: float = 5.0):
        self.what, self.stop, self.base_s, self.cap_s = what, stop, base_s, cap_s
        self.failures = 0
        self.cause: str | None = None  # what the current outage is about, None when healthy

    async def failed(self, exc: BaseException) -> None:
        """Wait before the next try; raise Stopping if a stop is asked for meanwhile."""
        cause = describe(exc)
        if self.failures == 0 or cause != self.cause:
            if is_refusal(exc):
                log.warning(f"{self.what} refused the statement, retrying", error=cause)
            else:
                log.warning(f"{self.what} unavailable, retrying", error=cause)
        self.failures += 1
        self.cause = cause
        obs.WORKER_RETRIES.labels(self.what).inc()
        obs.WORKER_RETRYING.labels(self.what).set(1)
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2**self.failures))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        if self.stop.is_set():
            raise Stopping(f"{self.what} unavailable ({cause})") from exc

    def succeeded(self) -> None:
        if self.failures:
            log.info(f"{self.what} available again", failed_attempts=self.failures)
            self.failures = 0
            self.cause = None
            obs.WORKER_RETRYING.labels(self.what).set(0)


class Retrying:
    """Runs Redis and PostgreSQL calls until they succeed. Only rows PostgreSQL refuses escape
    (as DataRejected): a lost connection, a restart, a deadlock or a missing table heals by
    waiting, and whatever is pending stays unacknowledged meanwhile."""

    def __init__(
        self, stop: asyncio.Event, regroup: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.redis_backoff = Backoff("redis", stop)
        self.postgres_backoff = Backoff("postgres", stop)
        self.regroup = regroup

    def problems(self) -> dict[str, str]:
        """What is being retried right now, by dependency (empty when all is well)."""
        return {
            b.what: b.cause
            for b in (self.redis_backoff, self.postgres_backoff)
            if b.cause is not None
        }

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
            # RedisClusterException: a cluster's topology unknown while it fails over.
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                await self.redis_backoff.failed(exc)
                continue
            self.redis_backoff.succeeded()
            return result

    async def postgres(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        probe: Callable[[], Awaitable[object]] | None = None,
        refused: frozenset[str] = frozenset(),
    ) -> T:
        """With a `probe` (the same statement without the rows), a refusal that persists while
        the probe succeeds is the rows' own fault: DataRejected. SQLSTATEs in `refused` were
        found to be that already (while a batch is being halved) and escape at once."""
        refusals = 0
        while True:
            try:
                result = await call()
            except POSTGRES_ERRORS as exc:
                sqlstate = sqlstate_of(exc)
                if is_data_error(exc) or (sqlstate is not None and sqlstate in refused):
                    raise DataRejected(sqlstate or "", str(exc)) from exc
                if probe is not None and is_refusal(exc):
                    refusals += 1
                    if refusals >= REFUSALS_BEFORE_PROBE and await _succeeds(probe):
                        raise DataRejected(sqlstate or "", str(exc)) from exc
                await self.postgres_backoff.failed(exc)
                continue
            self.postgres_backoff.succeeded()
            return result


async def _succeeds(probe: Callable[[], Awaitable[object]]) -> bool:
    try:
        await probe()
    except POSTGRES_ERRORS:
        return False
    return True
