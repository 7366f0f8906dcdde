"""The stream consumer: read a batch, store it in one transaction, acknowledge after commit.

One loop per worker: first the entries this consumer name left pending in a previous life,
then, in turn, a page of entries reclaimed from dead consumers (when a reclaim pass is due),
housekeeping (when due) and a blocking read of new entries (with partitions, one partition's
batch at a time, in turn: core/partition_reads.py). New batches are pipelined: while
one commits, the next is read and decoded, and a reclaimed page may commit beside them. That
is safe because every statement writes its rows in key order, so this worker's concurrent
transactions can no more deadlock each other than two workers' can, and each batch is
acknowledged only after its own commit. At a stop the worker commits and acknowledges what
it holds, re-reading its own pending entries (a read whose reply was lost leaves some), and
says how many it had to leave pending when a dependency was down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial

import msgspec
import structlog
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from queueflow.core import observability as obs
from queueflow.core.config import Settings
from queueflow.core.events import decode_entry, encode_event
from queueflow.core.store import EventStore, stored_event
from queueflow.core.stream import (
    EVENT_FIELD,
    REDIS_ERRORS,
    TRACEPARENT_FIELD,
    Entry,
    EventStream,
)
from queueflow.core.tracing import Tracing, links
from queueflow.worker.housekeeping import Housekeeping
from queueflow.worker.reclaim import Reclaimer
from queueflow.worker.retry import DataRejected, Retrying, Stopping

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Batch:
    """Entries read together: the rows to store and what redelivery told about them."""

    entries: list[Entry]
    rows: list[tuple[Entry, bytes]]  # each entry to store and its stored_event()
    received_ms: list[int]  # of each row, for freshness
    deliveries: dict[bytes, int]
    started: float
    span: Span  # linked to each producer's span; INVALID_SPAN when tracing is off


class Consumer:
    def __init__(
        self,
        stream: EventStream,
        store: EventStore,
        settings: Settings,
        tracing: Tracing | None = None,
    ) -> None:
        self.stream = stream
        self.tracing = tracing or Tracing.off()
        self.store = store
        self.settings = settings
        self.name = settings.consumer
        # Entries this consumer may hold unseen: a previous life's, or a read whose reply was
        # lost. True at start, so the loop's first step takes back the previous life's.
        self.own_pending_unread = True
        self.retry = Retrying(asyncio.Event())  # run() binds it to the real stop event
        self.reclaimer = Reclaimer(
            stream,
            self.name,
            min_idle_ms=settings.claim_idle_ms,
            page_size=settings.batch_size,
            interval_s=settings.reclaim_interval_ms / 1000,
        )
        self.housekeeping = Housekeeping(
            stream,
            self.name,
            interval_s=settings.trim_interval_ms / 1000,
            consumer_idle_ms=settings.consumer_idle_delete_ms,
        )

    async def run(self, stop: asyncio.Event) -> int | None:
        """Consume until `stop` is set, then finish what this consumer holds. Returns how many
        entries it leaves pending (None when Redis could not tell)."""
        self.retry = Retrying(stop, regroup=self.stream.ensure_group)
        try:
            await self._consume(stop)
        except Stopping as exc:
            log.warning("stopping while a dependency fails", reason=str(exc))
        try:
            # One more try even after a failure: a read whose reply was lost at the stop left
            # entries with this consumer while Redis and PostgreSQL may be fine.
            await self._finish_own_pending()
        except Stopping as exc:
            left = await self.pending_left()
            log.warning(
                "stopped while a dependency was down; unacknowledged entries stay "
                "pending for another worker to reclaim",
                reason=str(exc),
                pending_left=left,
            )
            return left
        return 0

    async def pending_left(self) -> int | None:
        """Entries this consumer still holds, asked of Redis once, briefly."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                return await self.stream.pending_count(self.name)
        except REDIS_ERRORS:
            return None

    async def _finish_own_pending(self) -> None:
        # Blocking reads still out on partitions would deliver entries behind our back.
        await self.stream.settle_reads()
        while entries := await self.retry.redis(self._read_own_pending):
            await self.process(entries, redelivered=True)

    async def _read_own_pending(self) -> list[Entry]:
        return await self.stream.read_own_pending(self.name, count=self.settings.batch_size)

    async def _read_new(self) -> list[Entry]:
        try:
            return await self.stream.read_new(
                self.name, count=self.settings.batch_size, block_ms=self.settings.block_ms
            )
        except BaseException:
            # Redis may have delivered entries whose reply never arrived: they are this
            # consumer's now, so take them back before reading further.
            self.own_pending_unread = True
            raise

    async def _consume(self, stop: asyncio.Event) -> None:
        await self.retry.redis(self.stream.ensure_group)
        committing: asyncio.Task[int] | None = None
        try:
            while not stop.is_set():
                if self.own_pending_unread:
                    self.own_pending_unread = False
                    if committing is not None:
                        await committing  # its entries are pending too until acknowledged
                        committing = None
                    await self._finish_own_pending()
                    continue
                if self.reclaimer.due():
                    reclaimed = await self.retry.redis(self.reclaimer.next_page)
                    if reclaimed:
                        log.info("entries reclaimed", count=len(reclaimed))
                        await self.process(reclaimed, redelivered=True)
                        continue
                if self.housekeeping.due():
                    await self.retry.redis(self.housekeeping.run)
                entries = await self.retry.redis(self._read_new)
                if entries:
                    batch = await self.prepare(entries)
                    if committing is not None:
                        await committing
                    committing = asyncio.create_task(self.commit(batch))
        finally:
            if committing is not None:
                await committing

    async def process(self, entries: list[Entry], *, redelivered: bool = False) -> int:
        """Store, dead-letter or drop each entry, then ack them all; returns events newly stored.
        Redelivered entries past QUEUEFLOW_MAX_DELIVERIES are dead-lettered, not retried."""
        return await self.commit(await self.prepare(entries, redelivered=redelivered))

    async def prepare(self, entries: list[Entry], *, redelivered: bool = False) -> Batch:
        """Decode entries into rows; dead-letter what cannot be stored, whatever the database."""
        batch = Batch(entries, [], [], {}, time.perf_counter(), self._batch_span(entries))
        obs.WORKER_BATCH_SIZE.observe(len(entries))
        if redelivered:
            counts = partial(self.stream.delivery_counts, self.name, entries)
            batch.deliveries = await self.retry.redis(counts)
        for entry in entries:
            delivered = batch.deliveries.get(entry.id, 1)
            payload = entry.fields.get(EVENT_FIELD)
            if not entry.fields:
                continue  # deleted from the stream while pending: nothing left to store
            if delivered > self.settings.max_deliveries:
                reason = f"max deliveries: delivered {delivered} times"
                await self._dead_letter(entry, "max_deliveries", reason, delivered)
            elif payload is None:
                reason = "undecodable: no event field"
                await self._dead_letter(entry, "undecodable", reason, delivered)
            else:
                try:
                    event = decode_entry(payload)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    await self._dead_letter(entry, "undecodable", f"undecodable: {exc}", delivered)
                    continue
                # Re-encoded: PostgreSQL parses exactly what was validated, in normal form.
                received_ms = entry.received_ms
                batch.rows.append((entry, stored_event(encode_event(event), received_ms)))
                batch.received_ms.append(received_ms)
        return batch

    async def commit(self, batch: Batch) -> int:
        """Store the rows in one transaction, then acknowledge every entry of the batch."""
        with trace.use_span(batch.span, end_on_exit=True):
            inserted = await self._save(batch.rows, batch.deliveries)
            committed_ms = time.time() * 1000
            for received_ms in batch.received_ms:
                obs.EVENT_FRESHNESS.observe((committed_ms - received_ms) / 1000)
            obs.WORKER_PROCESSED.inc(inserted)
            obs.WORKER_DUPLICATES.inc(len(batch.rows) - inserted)
            await self.retry.redis(partial(self.stream.ack_entries, batch.entries))
            elapsed = time.perf_counter() - batch.started
            obs.WORKER_BATCH_DURATION.observe(elapsed)
            log.info(
                "batch committed",
                entries=len(batch.entries),
                stored=inserted,
                duplicates=len(batch.rows) - inserted,
                duration_ms=round(elapsed * 1000, 1),
            )
        return inserted

    def _batch_span(self, entries: list[Entry]) -> Span:
        if not self.tracing.enabled:
            return trace.INVALID_SPAN
        producers = (e.fields[TRACEPARENT_FIELD] for e in entries if TRACEPARENT_FIELD in e.fields)
        return self.tracing.tracer.start_span(
            f"process {self.stream.name}",
            kind=SpanKind.CONSUMER,
            links=links(producers),
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.operation.name": "XREADGROUP",
                "messaging.destination.name": self.stream.name,
                "messaging.consumer.group.name": self.stream.group,
                "messaging.destination.subscription.name": self.stream.group,
                "messaging.batch.message_count": len(entries),
                "messaging.client.id": self.name,
            },
        )

    async def _save(
        self,
        batch: list[tuple[Entry, bytes]],
        deliveries: dict[bytes, int],
        refused: frozenset[str] = frozenset(),
    ) -> int:
        """Commit the batch. Rows PostgreSQL refuses (a data error, or an error that persists
        while the same statement without rows succeeds) are isolated by halving the batch and
        dead-lettered with their SQLSTATE, so they never hold back the good rows beside them
        nor stall the worker."""
        if not batch:
            return 0
        try:
            rows = [row for _, row in batch]
            return await self.retry.postgres(
                partial(self.store.save_batch, rows),
                probe=partial(self.store.save_batch, []),
                refused=refused,
            )
        except DataRejected as exc:
            if len(batch) == 1:
                entry = batch[0][0]
                await self._dead_letter(
                    entry, "rejected", f"rejected by database: {exc}", deliveries.get(entry.id, 1)
                )
                return 0
            refused = refused | {exc.sqlstate}
            half = len(batch) // 2
            return await self._save(batch[:half], deliveries, refused) + await self._save(
                batch[half:], deliveries, refused
            )

    async def _dead_letter(self, entry: Entry, kind: str, reason: str, deliveries: int) -> None:
        """`kind` (max_deliveries, undecodable, rejected) labels the metric; `reason`, stored
        with the entry, says what exactly went wrong."""
        log.warning("entry dead-lettered", entry_id=entry.id.decode(), reason=reason)
        await self.retry.redis(partial(self.stream.dead_letter, entry, reason, deliveries))
        obs.WORKER_DEAD_LETTERED.labels(kind).inc()
