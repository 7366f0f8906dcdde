"""The worker's consumer against real servers: ack after commit, pending work recovered,
poison isolated to the dead-letter stream, and a failing database never acked past."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from queueflow.core.config import Settings
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EVENT_FIELD, EventStream, connect
from queueflow.worker.consumer import Consumer
from tests.helpers import group_state, payload, running, until


async def pending_count(r: redis.Redis, settings: Settings) -> int:
    state = await group_state(r, settings)
    return state[1] if state else 0


async def test_events_sent_before_the_first_worker_are_counted(parts, settings, db) -> None:
    stream, store = parts
    await stream.add([payload(event_id=f"early{i}") for i in range(5)])
    async with running(Consumer(stream, store, settings)):
        await until(lambda: db.fetchval("SELECT count(*) = 5 FROM events"))
    assert await pending_count(stream.client, settings) == 0


async def test_a_restarted_consumer_finishes_its_own_pending_entries(parts, settings, db) -> None:
    stream, store = parts
    await stream.ensure_group()
    await stream.add([payload(event_id=f"p{i}", user_id=f"u{i}") for i in range(7)])
    # A previous life of this consumer read the entries and died before acking them.
    delivered = await stream.read_new(settings.consumer, count=100, block_ms=100)
    assert len(delivered) == 7 and await pending_count(stream.client, settings) == 7
    async with running(Consumer(stream, store, settings)):
        await until(lambda: db.fetchval("SELECT sum(bit_count(users)) = 7 FROM daily_user_bits"))
        await until(lambda: _zero_pending(stream.client, settings))


async def _zero_pending(r: redis.Redis, settings: Settings) -> bool:
    """Everything in the stream was delivered (lag 0) and acknowledged (pending 0)."""
    return await group_state(r, settings) == (0, 0)


async def test_undecodable_entries_are_dead_lettered_and_the_rest_counted(
    parts, settings, db, redis_client
) -> None:
    stream, store = parts
    await stream.ensure_group()
    await redis_client.xadd(settings.stream, {EVENT_FIELD: payload(event_id="good1")})
    garbage_id = await redis_client.xadd(settings.stream, {EVENT_FIELD: b"\x00garbage"})
    await redis_client.xadd(settings.stream, {b"unexpected": b"field"})
    await redis_client.xadd(settings.stream, {EVENT_FIELD: b'{"site_id": "no-id"}'})
    await redis_client.xadd(settings.stream, {EVENT_FIELD: payload(event_id="good2")})
    async with running(Consumer(stream, store, settings)):
        await until(lambda: _zero_pending(redis_client, settings))
    assert await db.fetchval("SELECT count(*) FROM events") == 2
    dead = await redis_client.xrange(settings.dead_letter_stream)
    assert len(dead) == 3
    first = dead[0][1]
    assert first[b"source_id"] == garbage_id and first[EVENT_FIELD] == b"\x00garbage"
    assert first[b"reason"].startswith(b"undecodable")


async def test_a_row_the_database_rejects_is_isolated(parts, settings, db, redis_client) -> None:
    stream, store = parts
    await db.execute("ALTER TABLE events ADD CONSTRAINT no_poison CHECK (user_id <> 'poison')")
    ids = [f"r{i}" for i in range(20)]
    await stream.add([payload(event_id=i, user_id="poison" if i == "r13" else i) for i in ids])
    async with running(Consumer(stream, store, settings)):
        await until(lambda: _zero_pending(redis_client, settings))
    assert await db.fetchval("SELECT count(*) FROM events") == 19
    assert await db.fetchval("SELECT sum(bit_count(users)) FROM daily_user_bits") == 19
    (dead,) = await redis_client.xrange(settings.dead_letter_stream)
    assert b"rejected by database" in dead[1][b"reason"] and b"no_poison" in dead[1][b"reason"]


async def test_while_the_database_fails_nothing_is_acked_then_all_is_counted_once(
    parts, settings, db, redis_client
) -> None:
    stream, store = parts
    await db.execute("ALTER TABLE daily_site_stats RENAME TO daily_site_stats_away")
    await stream.add([payload(event_id=f"t{i}") for i in range(50)])
    async with running(Consumer(stream, store, settings)):
        await until(lambda: _pending_is(redis_client, settings, 50))
        await asyncio.sleep(0.5)  # several failed retries
        assert await _pending_is(redis_client, settings, 50)
        await db.execute("ALTER TABLE daily_site_stats_away RENAME TO daily_site_stats")
        await until(lambda: _zero_pending(redis_client, settings))
    assert await db.fetchval("SELECT total_views FROM daily_site_stats") == 50
    assert await redis_client.xlen(settings.dead_letter_stream) == 0


async def test_terminated_database_connections_are_survived(parts, settings, db, redis_client):
    stream, store = parts
    async with running(Consumer(stream, store, settings)):
        for round_ in range(5):
            await stream.add([payload(event_id=f"k{round_}-{i}") for i in range(20)])
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await until(lambda: db.fetchval("SELECT count(*) = 100 FROM events"))
        await until(lambda: _zero_pending(redis_client, settings))
    assert await db.fetchval("SELECT total_views FROM daily_site_stats") == 100


async def _pending_is(r: redis.Redis, settings: Settings, n: int) -> bool:
    return await pending_count(r, settings) == n


async def test_a_stream_lost_by_redis_is_recreated_and_consumption_goes_on(
    parts, settings, db, redis_client
) -> None:
    stream, store = parts
    async with running(Consumer(stream, store, settings)):
        await stream.add([payload(event_id="before")])
        await until(lambda: db.fetchval("SELECT count(*) = 1 FROM events"))
        await redis_client.delete(settings.stream)  # Redis restarted without persistence
        await asyncio.sleep(0.3)
        await stream.add([payload(event_id="after")])
        await until(lambda: db.fetchval("SELECT count(*) = 2 FROM events"))


async def test_a_redis_url_asking_for_resp3_works_end_to_end(settings, db, redis_client) -> None:
    # Appends, reads and acks parse their own replies, whose shapes differ under RESP3.
    resp3 = settings.model_copy(update={"redis_url": f"{settings.redis_dsn()}?protocol=3"})
    client = connect(resp3.redis_dsn(), timeout_s=5)
    pool = await create_pool(settings.database_dsn(), max_size=2)
    try:
        stream = EventStream(client, resp3)
        await stream.add([payload(event_id="r3-a")])  # one event: a plain XADD; then a script
        await stream.add([payload(event_id=f"r3-{i}") for i in range(3)])
        async with running(Consumer(stream, EventStore(pool), resp3)):
            await until(lambda: _zero_pending(redis_client, settings))
        assert await db.fetchval("SELECT count(*) FROM events") == 4
        assert str((await client.client_info())["resp"]) == "3"
    finally:
        await pool.close()
        await client.aclose()


async def test_the_same_event_id_from_two_sites_is_two_events(parts, settings, db) -> None:
    stream, store = parts
    await stream.add([payload(site_id="a", event_id="same"), payload(site_id="b", event_id="same")])
    await stream.add([payload(site_id="a", event_id="same")])  # a's resend counts once
    async with running(Consumer(stream, store, settings)):
        await until(lambda: _zero_pending(stream.client, settings))
    stats = await db.fetch("SELECT site_id, total_views FROM daily_site_stats ORDER BY 1")
    assert [tuple(r) for r in stats] == [("a", 1), ("b", 1)]


# A row PostgreSQL refuses with an error that is not a data error (class 22/23) and that the
# same statement without rows does not raise: program_limit_exceeded, as for an index row over
# the B-tree limit, raised here by a trigger for one chosen row.
REFUSE_ONE_ROW = """
CREATE FUNCTION refuse_huge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id = 'huge' THEN
        RAISE EXCEPTION 'index row size exceeds btree maximum' USING ERRCODE = '54000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_huge BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_huge();
"""


async def test_a_row_refused_persistently_is_dead_lettered_with_its_sqlstate(
    parts, settings, db, redis_client
) -> None:
    stream, store = parts
    await db.execute(REFUSE_ONE_ROW)
    ids = [f"h{i}" for i in range(40)]
    await stream.add([payload(event_id=i, user_id="huge" if i == "h29" else i) for i in ids])
    async with running(Consumer(stream, store, settings)):
        await until(lambda: _zero_pending(redis_client, settings))
        await stream.add([payload(event_id="after", user_id="after")])  # the worker goes on
        await until(lambda: db.fetchval("SELECT count(*) = 40 FROM events"))
    assert await db.fetchval("SELECT sum(bit_count(users)) FROM daily_user_bits") == 40
    (dead,) = await redis_client.xrange(settings.dead_letter_stream)
    assert dead[1][b"reason"].startswith(b"rejected by database: SQLSTATE 54000")
    assert b'"h29"' in dead[1][EVENT_FIELD]


async def test_a_database_refusing_every_batch_is_retried_and_said_not_ready(
    parts, settings, db, redis_client
) -> None:
    """Refused with rows or without (here a statement trigger, as a missing privilege would):
    the database's fault, not the events'. Nothing is dead-lettered or acknowledged; the
    worker says what it retries on until the database accepts the batch again."""
    from queueflow.core import observability as obs

    stream, store = parts
    await db.execute("""
        CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'permission denied for table events' USING ERRCODE = '42501';
        END $$;
        CREATE TRIGGER refuse_all BEFORE INSERT ON events
            FOR EACH STATEMENT EXECUTE FUNCTION refuse_all();
    """)
    await stream.add([payload(event_id=f"d{i}") for i in range(10)])
    consumer = Consumer(stream, store, settings)
    retrying = obs.WORKER_RETRYING.labels("postgres")
    async with running(consumer):
        await until(lambda: _pending_is(redis_client, settings, 10))
        await until(lambda: _async(bool(consumer.retry.problems())))
        assert "SQLSTATE 42501" in consumer.retry.problems()["postgres"]
        assert retrying._value.get() == 1
        await asyncio.sleep(0.5)
        assert await _pending_is(redis_client, settings, 10)
        assert await redis_client.xlen(settings.dead_letter_stream) == 0
        await db.execute("DROP TRIGGER refuse_all ON events")
        await until(lambda: _zero_pending(redis_client, settings))
    assert consumer.retry.problems() == {} and retrying._value.get() == 0
    assert await db.fetchval("SELECT total_views FROM daily_site_stats") == 10


async def _async(value: bool) -> bool:
    return value


class LosesOneReply(EventStream):
    """A real stream whose first read that delivers entries loses its reply (a timeout after
    Redis handed the entries to this consumer), optionally as a stop is asked for."""

    def __init__(self, stream: EventStream, settings: Settings, stop: asyncio.Event | None):
        super().__init__(stream.client, settings)
        self.stop, self.lost = stop, 0

    async def read_new(self, consumer: str, *, count: int, block_ms: int | None) -> list:
        entries = await super().read_new(consumer, count=count, block_ms=block_ms)
        if entries and not self.lost:
            self.lost = len(entries)
            if self.stop is not None:
                self.stop.set()
            raise TimeoutError("reply lost")
        return entries


async def test_entries_of_a_read_whose_reply_was_lost_are_taken_back_at_once(
    parts, settings, db, redis_client
) -> None:
    stream, store = parts
    lossy = LosesOneReply(stream, settings, stop=None)
    await stream.add([payload(event_id=f"l{i}", user_id=f"u{i}") for i in range(30)])
    async with running(Consumer(lossy, store, settings)):  # claim_idle is 30 s: not a reclaim
        await until(lambda: _zero_pending(redis_client, settings), timeout_s=5)
    assert lossy.lost == 30
    assert await db.fetchval("SELECT count(*) FROM events") == 30


async def test_a_stopping_worker_finishes_entries_whose_read_reply_it_lost(
    parts, settings, db, redis_client
) -> None:
    stream, store = parts
    stop = asyncio.Event()
    lossy = LosesOneReply(stream, settings, stop)
    await stream.add([payload(event_id=f"s{i}", user_id=f"u{i}") for i in range(30)])
    left = await asyncio.wait_for(Consumer(lossy, store, settings).run(stop), 10)
    assert lossy.lost == 30 and left == 0
    assert await pending_count(redis_client, settings) == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 30
