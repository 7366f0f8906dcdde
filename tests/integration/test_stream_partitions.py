"""A stream in partitions (QUEUEFLOW_STREAM_PARTITIONS) on one real server: names, one
request to one partition, fair reads, reclaim, dead letters, trimming, backpressure, the
watermark and the gauges across partitions; and the default keeping its one stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, date, datetime

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from queueflow.core.config import Settings
from queueflow.core.dead_letters import DeadLetters
from queueflow.core.ingest_counts import counts_key, day_counts
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EVENT_FIELD, EventStream, connect, partition_names
from queueflow.ingest.accounting import Accounting
from queueflow.ingest.app import create_app
from queueflow.ingest.backpressure import Backlog
from queueflow.worker.consumer import Consumer
from queueflow.worker.stream_metrics import export_stream_metrics
from tests.helpers import payload, running, serve, service_env, until
from tests.integration import test_faults
from tests.integration.test_faults import QUICK
from tests.partitioned import kill_a_worker_mid_drain

started = test_faults.started  # the fixture: every service a test starts, stopped at its end

PARTITIONS = 4


def quick(settings: Settings, **changes: object) -> Settings:
    defaults = {"claim_idle_ms": 300, "reclaim_interval_ms": 100, "trim_interval_ms": 100}
    return settings.model_copy(update={**defaults, **changes})


@pytest.fixture
def partitioned(settings: Settings) -> Settings:
    return settings.model_copy(update={"stream_partitions": PARTITIONS})


@pytest.fixture
async def parts4(partitioned: Settings) -> AsyncIterator[tuple[EventStream, EventStore]]:
    client = connect(partitioned.redis_dsn(), timeout_s=5)
    pool = await create_pool(partitioned.database_dsn(), max_size=2)
    yield EventStream(client, partitioned), EventStore(pool)
    await pool.close()
    await client.aclose()


def today() -> date:
    return datetime.now(UTC).date()


async def all_zero(figures: Awaitable[list[int]]) -> bool:
    return not any(await figures)


async def lengths(r: redis.Redis, stream: EventStream) -> list[int]:
    return [await r.xlen(name) for name in stream.names]


async def pending(r: redis.Redis, stream: EventStream) -> list[int]:
    return [(await r.xpending(name, stream.group))["pending"] for name in stream.names]


async def test_one_partition_is_the_stream_itself(parts, settings, redis_client) -> None:
    stream, _ = parts
    assert stream.names == [settings.stream] and partition_names("s", 1) == ["s"]
    accounting = Accounting(redis_client, settings.stream)
    stream.count = accounting.accepted
    await stream.ensure_group()
    await stream.add([payload()], sites=["site-1"])
    assert await redis_client.xlen(settings.stream) == 1
    assert await redis_client.keys(f"{settings.stream}:*") == []
    key = counts_key(settings.stream, today(), "site-1")
    assert key.startswith(b"{%s}:ingest:" % settings.stream.encode())
    assert await redis_client.hget(key, "accepted") == b"1"


async def test_partitions_are_hash_tagged_streams_each_with_the_group(
    parts4, partitioned, redis_client
) -> None:
    stream, _ = parts4
    assert stream.names == [f"{partitioned.stream}:{{{i}}}" for i in range(PARTITIONS)]
    await stream.ensure_group()
    await stream.ensure_group()  # BUSYGROUP on every partition is fine
    for name in stream.names:
        (group,) = await redis_client.xinfo_groups(name)
        assert group["name"].decode() == partitioned.group


async def test_ingest_creates_every_partitions_group_with_no_worker_running(
    partitioned, redis_client
) -> None:
    async def every_group() -> bool:
        names = partition_names(partitioned.stream, PARTITIONS)
        groups = [
            await redis_client.xinfo_groups(n) if await redis_client.exists(n) else []
            for n in names
        ]
        return all(g and g[0]["name"].decode() == partitioned.group for g in groups)

    assert not await every_group()
    async with serve(create_app(partitioned)):  # KEDA's triggers read the groups: made at once
        await until(every_group)


async def test_each_request_goes_whole_to_one_partition_with_its_counts(
    parts4, partitioned, redis_client
) -> None:
    stream, _ = parts4
    accounting = Accounting(redis_client, partitioned.stream, partitions=PARTITIONS)
    stream.count = accounting.accepted
    for n in range(8):  # one after the other: each its own round trip
        await stream.add([payload(event_id=f"r{n}-{i}") for i in range(5)], sites=["a"] * 5)
    assert await lengths(redis_client, stream) == [10] * PARTITIONS
    for name in stream.names:  # a request's five events side by side in one partition
        ids = [e[1][EVENT_FIELD] for e in await redis_client.xrange(name)]
        requests = [p.split(b'"event_id":"r')[1].split(b"-")[0] for p in ids]
        assert requests[:5] == [requests[0]] * 5 and requests[5:] == [requests[5]] * 5
        key = counts_key(name, today(), "a")
        assert key.startswith(name.encode() + b":ingest:")  # the partition's own hash slot
        assert await redis_client.hget(key, "accepted") == b"10"
    counted = await day_counts(redis_client, stream.names, today(), "a")
    assert counted.accepted == 40


async def test_a_big_backlog_in_one_partition_does_not_starve_the_others(
    parts4, partitioned, redis_client, db
) -> None:
    stream, store = parts4
    await stream.ensure_group()
    pipe = redis_client.pipeline(transaction=False)
    for i in range(20_000):
        pipe.xadd(stream.names[0], {EVENT_FIELD: payload(event_id=f"old-{i}")})
    await pipe.execute()
    consumer = Consumer(stream, store, quick(partitioned, batch_size=100))
    async with running(consumer):
        await until(lambda: db.fetchval("SELECT count(*) > 0 FROM events"))
        await redis_client.xadd(stream.names[2], {EVENT_FIELD: payload(event_id="new-1")})
        sent = time.monotonic()
        await until(lambda: db.fetchval("SELECT count(*) = 1 FROM events WHERE event_id = 'new-1'"))
        took = time.monotonic() - sent
        # Stored within a turn of the partitions, while the backlog is still draining.
        backlog_left = (await redis_client.xinfo_groups(stream.names[0]))[0]["lag"]
        assert backlog_left > 0 and took < 1.0, (backlog_left, took)
        await until(lambda: db.fetchval("SELECT count(*) = 20001 FROM events"), timeout_s=60)


async def test_new_entries_of_any_partition_end_a_blocking_read(parts4, redis_client) -> None:
    stream, _ = parts4
    await stream.ensure_group()
    reading = asyncio.create_task(stream.read_new("w", count=10, block_ms=5000))
    await asyncio.sleep(0.2)
    await redis_client.xadd(stream.names[3], {EVENT_FIELD: b"x"})
    (entry,) = await asyncio.wait_for(reading, 2)
    assert entry.partition == 3
    await stream.ack_entries([entry])
    assert await pending(redis_client, stream) == [0] * PARTITIONS


async def test_a_dead_consumers_entries_are_reclaimed_on_every_partition(
    parts4, partitioned, db, redis_client
) -> None:
    stream, store = parts4
    await stream.ensure_group()
    for n in range(8):
        await stream.add([payload(event_id=f"d{n}-{i}", user_id=f"u{n}-{i}") for i in range(5)])
    taken = []
    while entries := await stream.read_new("dead-pod", count=100, block_ms=None):
        taken += entries  # then it dies
    assert len(taken) == 40 and {e.partition for e in taken} == set(range(PARTITIONS))
    assert await pending(redis_client, stream) == [10] * PARTITIONS
    survivor = Consumer(stream, store, quick(partitioned, consumer="live-pod"))
    async with running(survivor):
        await until(lambda: db.fetchval("SELECT count(*) = 40 FROM events"))
        await until(lambda: all_zero(pending(redis_client, stream)))
    assert await stream.pending_count("dead-pod") == 0


async def test_dead_letters_name_their_partition_and_replay_to_one(
    parts4, partitioned, db, redis_client
) -> None:
    stream, store = parts4
    await stream.ensure_group()
    await redis_client.xadd(stream.names[1], {EVENT_FIELD: b"\x00garbage"})
    await redis_client.xadd(stream.names[3], {b"other": b"field"})
    async with running(Consumer(stream, store, quick(partitioned))):
        await until(lambda: count_is(stream.dead_letter_count(), 2))
    assert await pending(redis_client, stream) == [0] * PARTITIONS
    # And one set aside by hand from partition 2: it holds a good event.
    await redis_client.xadd(stream.names[2], {EVENT_FIELD: payload(event_id="again")})
    (entry,) = await stream.read_new("by-hand", count=1, block_ms=None)
    await stream.dead_letter(entry, "set aside by hand", 1)
    letters = DeadLetters(stream)
    found = {letter.source_stream: letter for letter in await letters.page(count=10)}
    assert sorted(found) == [stream.names[1], stream.names[2], stream.names[3]]
    replayed, skipped = await letters.replay(None)  # each back into a partition
    assert (replayed, skipped) == (2, [found[stream.names[3]].id])
    async with running(Consumer(stream, store, quick(partitioned))):
        await until(lambda: db.fetchval("SELECT count(*) = 1 FROM events WHERE event_id = 'again'"))
        await until(lambda: all_zero(pending(redis_client, stream)))


async def count_is(figure: Awaitable[int], n: int) -> bool:
    return await figure == n


async def test_trimming_backpressure_watermark_and_gauges_cover_every_partition(
    parts4, partitioned, redis_client, db
) -> None:
    stream, store = parts4
    await stream.ensure_group()
    first = await redis_client.xadd(stream.names[3], {EVENT_FIELD: payload(event_id="oldest")})
    for n in range(7):
        await stream.add([payload(event_id=f"b{n}-{i}") for i in range(3)])
    assert sum(await lengths(redis_client, stream)) == 22
    # Backpressure on the total: no partition is over 10, all together are.
    backlog = Backlog(stream, limit=20, refresh_s=1)
    await backlog.refresh()
    assert backlog.entries == 22 and backlog.over
    oldest_ms, unprocessed = await stream.watermark()
    assert unprocessed == 22 and oldest_ms == int(first.split(b"-")[0])
    await export_stream_metrics_once(stream)
    for index, length in enumerate(await lengths(redis_client, stream)):
        assert gauge("queueflow_stream_lag_entries", index) == length
        assert gauge("queueflow_stream_length_entries", index) == length
    async with running(Consumer(stream, store, quick(partitioned))):
        await until(lambda: db.fetchval("SELECT count(*) = 22 FROM events"))
        await until(lambda: all_zero(lengths(redis_client, stream)))  # trimmed, each one
    await backlog.refresh()
    assert backlog.entries == 0 and not backlog.over
    assert await stream.watermark() == (None, 0)
    await export_stream_metrics_once(stream)
    assert [gauge("queueflow_stream_lag_entries", i) for i in range(PARTITIONS)] == [0] * 4


async def export_stream_metrics_once(stream: EventStream) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(export_stream_metrics(stream, 60, stop))
    await asyncio.sleep(0.2)
    stop.set()
    await task


def gauge(name: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(name, {"partition": str(partition)})


def test_a_worker_killed_mid_drain_is_reclaimed_on_every_partition(started, settings) -> None:
    env = {**service_env(settings), **QUICK, "QUEUEFLOW_STREAM_PARTITIONS": str(PARTITIONS)}
    kill_a_worker_mid_drain(started, env, str(settings.database_url))
