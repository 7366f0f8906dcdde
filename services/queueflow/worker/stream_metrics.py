"""The stream's gauges (length, lag, pending, oldest pending age, consumers, dead letters),
read by each worker on a timer with one pipelined round trip, never per request."""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.exceptions import RedisError

from queueflow.core import observability as obs
from queueflow.core.stream import EventStream


async def export_stream_metrics(
    stream: EventStream, interval_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            # Redis down: the gauges keep their last values; the consumer logs the outage.
            stats = await stream.stats()
            obs.STREAM_LENGTH.set(stats.length)
            obs.STREAM_LAG.set(stats.lag)
            obs.STREAM_PENDING.set(stats.pending)
            obs.STREAM_CONSUMERS.set(stats.consumers)
            obs.DEAD_LETTER_LENGTH.set(stats.dead_letters)
            oldest = stats.oldest_pending_ms
            age_s = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
            obs.STREAM_OLDEST_PENDING_AGE.set(age_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
