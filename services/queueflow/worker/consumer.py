"""The stream consumer: read a batch, store it in one transaction, acknowledge after commit."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import asyncpg
import msgspec
import structlog
from redis.exceptions import RedisError

from queueflow.core import observability as obs
from queueflow.core.config import Settings
from queueflow.core.events import Event, decode_entry
from queueflow.core.store import EventRow, EventStore
from queueflow.core.stream import EVENT_FIELD, Entry, EventStream

log = structlog.get_logger(__name__)
T = TypeVar("T")

_encode_json = msgspec.json.Encoder().encode


class DataRejected(Exception):
    """PostgreSQL refused a row for what it holds (SQLSTATE class 22 or 23)."""


def is_data_error(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in ("22", "23")


class Backoff:
    """Capped exponential backoff with full jitter; logs once when trouble starts and ends."""

    def __init__(self, what: str, base_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.what, self.base_s, self.cap_s, self.failures = what, base_s, cap_s, 0

    async def failed(self, exc: BaseException) -> None:
        if self.failures == 0:
            log.warning(f"{self.what} unavailable, retrying", error=repr(exc))
        self.failures += 1
        await asyncio.sleep(random.uniform(0, min(self.cap_s, self.base_s * 2**self.failures)))

    def succeeded(self) -> None:
        if self.failures:
            log.info(f"{self.what} available again", failed_attempts=self.failures)
            self.failures = 0


class Consumer:
    def __init__(self, stream: EventStream, store: EventStore, settings: Settings) -> None:
        self.stream = stream
        self.store = store
        self.name = settings.consumer
        self.batch_size = settings.batch_size
        self.block_ms = settings.block_ms
        self.redis_backoff = Backoff("redis")
        self.db_backoff = Backoff("postgres")

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is always finished and acknowledged."""
        await self._redis(self.stream.ensure_group)
        # First whatever this consumer name left pending before a crash or restart, then new.
        pending = True
        while not stop.is_set():
            read = partial(
                self.stream.read,
                self.name,
                count=self.batch_size,
                block_ms=self.block_ms,
                pending=pending,
            )
            entries = await self._redis(read)
            if pending and not entries:
                pending = False
            if entries:
                await self.process(entries)

    async def process(self, entries: list[Entry]) -> int:
        """Store, dead-letter or drop each entry, then ack them all; returns events newly stored."""
        started = time.perf_counter()
        obs.WORKER_BATCH_SIZE.observe(len(entries))
        good: list[tuple[Entry, EventRow]] = []
        for entry in entries:
            payload = entry.fields.get(EVENT_FIELD)
            if payload is None:
                if entry.fields:  # an entry with no fields was trimmed: nothing left to store
                    await self._dead_letter(entry, "undecodable: no event field")
                continue
            try:
                good.append((entry, _row(decode_entry(payload), entry)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._dead_letter(entry, f"undecodable: {exc}")
        inserted = await self._save(good)
        obs.WORKER_PROCESSED.inc(inserted)
        obs.WORKER_DUPLICATES.inc(len(good) - inserted)
        await self._redis(lambda: self.stream.ack([e.id for e in entries]))
        obs.WORKER_BATCH_DURATION.observe(time.perf_counter() - started)
        return inserted

    async def _save(self, batch: list[tuple[Entry, EventRow]]) -> int:
        """Commit the batch; a row PostgreSQL rejects for its data is isolated by halving the
        batch and dead-lettered, so it never holds back the good rows beside it."""
        if not batch:
            return 0
        try:
            return await self._postgres(lambda: self.store.save_batch([row for _, row in batch]))
        except DataRejected as exc:
            if len(batch) == 1:
                await self._dead_letter(batch[0][0], f"rejected by database: {exc.__cause__}")
                return 0
            half = len(batch) // 2
            return await self._save(batch[:half]) + await self._save(batch[half:])

    async def _dead_letter(self, entry: Entry, reason: str) -> None:
        log.warning("entry dead-lettered", entry_id=entry.id.decode(), reason=reason)
        await self._redis(lambda: self.stream.dead_letter(entry, reason))
        obs.WORKER_DEAD_LETTERED.labels(reason.split(":", 1)[0]).inc()

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                result = await call()
            except (RedisError, OSError, TimeoutError) as exc:
                await self.redis_backoff.failed(exc)
                continue
            self.redis_backoff.succeeded()
            return result

    async def _postgres(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry everything but data errors: a lost connection, a restart, a deadlock or a
        missing table heals by waiting, and the entries stay pending (never acked) meanwhile."""
        while True:
            try:
                result = await call()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                if is_data_error(exc):
                    raise DataRejected(str(exc)) from exc
                await self.db_backoff.failed(exc)
                continue
            self.db_backoff.succeeded()
            return result


def _row(event: Event, entry: Entry) -> EventRow:
    return EventRow(
        event_id=event.event_id,
        site_id=event.site_id,
        event_type=event.event_type,
        path=event.path,
        user_id=event.user_id,
        occurred_at=event.timestamp,
        received_at=datetime.fromtimestamp(entry.received_ms / 1000, UTC),
        referrer=event.referrer,
        properties=None if event.properties is None else _encode_json(event.properties).decode(),
    )
