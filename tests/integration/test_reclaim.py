"""Reclaim and upkeep against a real Redis-compatible server: XAUTOCLAIM of dead consumers'
entries, the delivery limit, trimming only what is processed, and idle-consumer cleanup."""

from __future__ import annotations

import asyncio

from queueflow.core.config import Settings
from queueflow.core.stream import EVENT_FIELD, EventStream
from queueflow.worker.consumer import Consumer
from queueflow.worker.reclaim import Reclaimer
from tests.helpers import group_state, payload, running, until


def quick(settings: Settings, **changes: object) -> Settings:
    defaults = {"claim_idle_ms": 300, "reclaim_interval_ms": 100, "trim_interval_ms": 100}
    return settings.model_copy(update={**defaults, **changes})


async def test_entries_of_a_dead_consumer_are_reclaimed_and_counted_once(parts, settings, db):
    stream, store = parts
    await stream.ensure_group()
    await stream.add([payload(event_id=f"d{i}", user_id=f"u{i}") for i in range(30)])
    taken = await stream.read_new("dead-pod", count=30, block_ms=100)  # then it dies
    assert len(taken) == 30
    survivor = Consumer(stream, store, quick(settings, consumer="live-pod"))
    async with running(survivor):
        await until(lambda: db.fetchval("SELECT count(*) = 30 FROM events"))
        await until(lambda: _drained(stream, settings))
    assert await db.fetchval("SELECT sum(bit_count(users)) FROM daily_user_bits") == 30


async def test_the_reclaim_cursor_walks_the_whole_pending_list_in_pages(parts, settings) -> None:
    stream, _ = parts
    await stream.ensure_group()
    await stream.add([payload(event_id=f"c{i}") for i in range(25)])
    await stream.read_new("gone", count=25, block_ms=100)
    await asyncio.sleep(0.05)
    reclaimer = Reclaimer(stream, "me", min_idle_ms=10, page_size=10, interval_s=60)
    pages = []
    while reclaimer.due():
        pages.append(len(await reclaimer.next_page()))
    assert sum(pages) == 25 and max(pages) <= 10
    assert not reclaimer.due()  # the pass is complete; the next waits for the interval


async def test_an_entry_delivered_too_often_is_dead_lettered(parts, settings, db, redis_client):
    stream, store = parts
    await stream.ensure_group()
    await stream.add([payload(event_id="crasher")])
    for _ in range(3):  # three consumers take it and die
        await stream.read_new("a", count=1, block_ms=100)
        await redis_client.xclaim(settings.stream, settings.group, "b", 0, [await _oldest(stream)])
    survivor = Consumer(stream, store, quick(settings, max_deliveries=2, consumer="c"))
    async with running(survivor):
        await until(lambda: redis_client.xlen(settings.dead_letter_stream))
        await until(lambda: _drained(stream, settings))
    (letter,) = await redis_client.xrange(settings.dead_letter_stream)
    fields = letter[1]
    assert fields[b"reason"].startswith(b"max deliveries")
    assert int(fields[b"deliveries"]) > 2 and fields[EVENT_FIELD]
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_trimming_removes_only_processed_entries(parts, settings, redis_client) -> None:
    stream, _ = parts
    await stream.ensure_group()
    ids = [await redis_client.xadd(settings.stream, {EVENT_FIELD: payload()}) for _ in range(10)]
    delivered = await stream.read_new("w", count=6, block_ms=100)  # 6 delivered, 4 undelivered
    await stream.ack([e.id for e in delivered[:3]])  # 3 acked, 3 pending
    assert await stream.trim_processed() == 3
    remaining = [entry_id for entry_id, _ in await redis_client.xrange(settings.stream)]
    assert remaining == ids[3:]
    await stream.ack([e.id for e in delivered[3:]])
    assert await stream.trim_processed() == 3
    assert [i for i, _ in await redis_client.xrange(settings.stream)] == ids[6:]


async def test_trimming_respects_every_group(parts, settings, redis_client) -> None:
    stream, _ = parts
    await stream.ensure_group()
    await redis_client.xgroup_create(settings.stream, "slow-group", id="0")
    for _ in range(5):
        await redis_client.xadd(settings.stream, {EVENT_FIELD: payload()})
    await stream.ack([e.id for e in await stream.read_new("w", count=5, block_ms=100)])
    assert await stream.trim_processed() == 0  # the other group has read nothing yet
    assert await redis_client.xlen(settings.stream) == 5


async def test_a_stream_nobody_consumes_is_never_trimmed(parts, settings, redis_client) -> None:
    stream, _ = parts
    await stream.add([payload(), payload()])
    assert await stream.trim_processed() == 0 and await redis_client.xlen(settings.stream) == 2


async def test_only_idle_consumers_with_nothing_pending_are_deleted(parts, settings) -> None:
    stream, _ = parts
    await stream.ensure_group()
    await stream.add([payload(), payload()])
    await stream.read_new("holds-one", count=1, block_ms=100)
    await stream.read_new("idle-empty", count=10, block_ms=100)
    await stream.ack([e.id for e in await stream.read_own_pending("idle-empty", count=10)])
    await stream.client.xgroup_createconsumer(settings.stream, settings.group, "me")
    await asyncio.sleep(0.3)
    assert await stream.delete_idle_consumers(idle_ms=200, keep="me") == ["idle-empty"]
    names = {
        c["name"] for c in await stream.client.xinfo_consumers(settings.stream, settings.group)
    }
    assert names == {b"holds-one", b"me"}


async def test_a_running_worker_keeps_the_stream_short(parts, settings, redis_client, db) -> None:
    stream, store = parts
    async with running(Consumer(stream, store, quick(settings))):
        for round_ in range(10):
            await stream.add([payload(event_id=f"t{round_}-{i}") for i in range(50)])
            await asyncio.sleep(0.05)
        await until(lambda: db.fetchval("SELECT count(*) = 500 FROM events"))
        await until(lambda: _length_is(redis_client, settings, 0))


async def _length_is(r, settings: Settings, n: int) -> bool:
    return await r.xlen(settings.stream) == n


async def _drained(stream: EventStream, settings: Settings) -> bool:
    return await group_state(stream.client, settings) == (0, 0)


async def _oldest(stream: EventStream) -> bytes:
    return (await stream.client.xpending(stream.name, stream.group))["min"]
