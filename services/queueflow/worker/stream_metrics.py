"""The stream's gauges (length, lag, pending, oldest pending age, consumers, by partition;
dead letters), read by each worker on a timer with one pipelined round trip, never per
request."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from queueflow.core import observability as obs
from queueflow.core.stream import REDIS_ERRORS, EventStream

log = structlog.get_logger(__name__)


async def export_stream_metrics(
    stream: EventStream, interval_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await _export(stream)
        except REDIS_ERRORS:
            pass  # Redis down: the gauges keep their last values; the consumer logs the outage
        except Exception:  # a bug here must not stop the gauges for good
            log.exception("stream metrics failed; keeping the last values")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _export(stream: EventStream) -> None:
    partitions = await stream.partition_stats()
    now = time.time()
    for index, stats in enumerate(partitions):
        partition = str(index)
        obs.STREAM_LENGTH.labels(partition).set(stats.length)
        obs.STREAM_LAG.labels(partition).set(stats.lag)
        obs.STREAM_PENDING.labels(partition).set(stats.pending)
        obs.STREAM_CONSUMERS.labels(partition).set(stats.consumers)
        oldest = stats.oldest_pending_ms
        obs.STREAM_OLDEST_PENDING_AGE.labels(partition).set(
            0.0 if oldest is None else max(0.0, now - oldest / 1000)
        )
    obs.DEAD_LETTER_LENGTH.set(partitions[0].dead_letters)
