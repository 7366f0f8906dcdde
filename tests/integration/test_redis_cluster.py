"""QueueFlow on a real Redis Cluster (3 primaries, 3 replicas; tests/redis_cluster.py) with
the stream in 4 partitions spread over the primaries: the stream's operations through the
cluster client and the packed fast path, a stale topology followed through MOVED and ASK, a
worker killed mid-drain, and a primary failing over while ingest keeps sending."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime

import httpx
import pytest

from queueflow.core import redis_wire as wire
from queueflow.core.config import Settings
from queueflow.core.dead_letters import DeadLetters
from queueflow.core.errors import StreamUnavailable
from queueflow.core.ingest_counts import day_counts
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EVENT_FIELD, EventStream, connect, partition_names
from queueflow.ingest.accounting import Accounting
from queueflow.worker.consumer import Consumer
from tests.helpers import (
    expected_stats,
    payload,
    running,
    service_env,
    until,
    wait_until_exact,
    workload,
)
from tests.integration import test_faults
from tests.integration.test_faults import QUICK, start, verify
from tests.integration.test_operator import queueflow
from tests.partitioned import kill_a_worker_mid_drain, send_retrying
from tests.redis_cluster import RedisClusterNodes

started = test_faults.started  # the fixture: every service a test starts, stopped at its end


@pytest.fixture
async def on_cluster(
    cluster_settings: Settings,
) -> AsyncIterator[tuple[EventStream, EventStore]]:
    client = connect(cluster_settings.redis_dsn(), timeout_s=5, cluster=True)
    pool = await create_pool(cluster_settings.database_dsn(), max_size=2)
    yield EventStream(client, cluster_settings), EventStore(pool)
    await pool.close()
    await client.aclose()


def cluster_env(settings: Settings) -> dict[str, str]:
    return {
        **service_env(settings),
        **QUICK,
        "QUEUEFLOW_REDIS_CLUSTER": "true",
        "QUEUEFLOW_STREAM_PARTITIONS": str(settings.stream_partitions),
    }


async def lengths(stream: EventStream) -> list[int]:
    return [await stream.client.xlen(name) for name in stream.names]


async def test_the_partitions_sit_on_every_primary_and_the_stream_works_there(
    on_cluster, cluster_settings, redis_cluster: RedisClusterNodes, db
) -> None:
    stream, store = on_cluster
    assert {redis_cluster.primary_of(n) for n in stream.names} == redis_cluster.primaries()
    accounting = Accounting(stream.client, stream.name, partitions=stream.partitions)
    stream.count = accounting.accepted
    await stream.ensure_group()
    await asyncio.gather(*(stream.add([payload(event_id=f"c{n}")], sites=["a"]) for n in range(40)))
    for n in range(8):
        await stream.add([payload(event_id=f"b{n}-{i}") for i in range(3)], sites=["a"] * 3)
    assert sum(await lengths(stream)) == 64 and all(await lengths(stream))
    today = datetime.now(UTC).date()
    assert (await day_counts(stream.client, stream.names, today, "a")).accepted == 64
    assert (await stream.stats()).lag == 64 and (await stream.watermark())[1] == 64
    # The packed commands go to each partition's owner on a hiredis-read connection.
    node = stream.client.get_node_from_key(stream.names[0])
    conn = node.acquire_connection()
    try:
        await conn.connect()
        assert wire.fast_path_available(conn)
    finally:
        node.release(conn)
    await stream.ping()
    async with running(Consumer(stream, store, cluster_settings.model_copy(update=QUICK_IN))):
        await until(lambda: db.fetchval("SELECT count(*) = 64 FROM events"))
        await until(lambda: _trimmed(stream))
    assert await stream.watermark() == (None, 0) and await stream.pending_count("x") == 0


QUICK_IN = {"claim_idle_ms": 300, "reclaim_interval_ms": 100, "trim_interval_ms": 100}


async def _trimmed(stream: EventStream) -> bool:
    return sum(await lengths(stream)) == 0


async def test_reclaim_and_dead_letters_across_the_cluster(on_cluster, cluster_settings, db):
    stream, store = on_cluster
    await stream.ensure_group()
    for n in range(8):
        await stream.add([payload(event_id=f"d{n}-{i}", user_id=f"u{n}") for i in range(5)])
    await stream.client.xadd(stream.names[2], {EVENT_FIELD: b"\x00garbage"})
    taken = []
    while entries := await stream.read_new("dead-pod", count=100, block_ms=None):
        taken += entries  # then it dies
    assert {e.partition for e in taken} == set(range(stream.partitions)) and len(taken) == 41
    quick = cluster_settings.model_copy(update={**QUICK_IN, "consumer": "live-pod"})
    async with running(Consumer(stream, store, quick)):
        await until(lambda: db.fetchval("SELECT count(*) = 40 FROM events"))
        await until(lambda: _count_is(stream.dead_letter_count(), 1))
        await until(lambda: _nothing_pending(stream))
    (letter,) = await DeadLetters(stream).page(count=10)
    assert letter.source_stream == stream.names[2] and letter.reason.startswith("undecodable")
    assert await DeadLetters(stream).replay(None) == (1, [])
    assert sum(await lengths(stream)) >= 1  # back in a partition
    assert await DeadLetters(stream).purge(None) == 0  # replayed ones are gone already


async def _count_is(figure: Awaitable[int], n: int) -> bool:
    return await figure == n


async def _nothing_pending(stream: EventStream) -> bool:
    return (await stream.stats()).pending == 0


async def test_a_stale_topology_is_followed_through_moved(
    on_cluster, redis_cluster: RedisClusterNodes
) -> None:
    stream, _ = on_cluster
    await stream.ensure_group()
    for n in range(8):
        await stream.add([payload(event_id=f"m{n}-{i}") for i in range(3)])
    owner = redis_cluster.primary_of(stream.names[0])
    redis_cluster.failover(owner)  # the client still believes `owner` serves partition 0
    for n in range(8, 16):
        await stream.add([payload(event_id=f"m{n}-{i}") for i in range(3)])  # MOVED, resent
    assert await lengths(stream) == [12] * stream.partitions  # each request exactly once
    read = []
    while entries := await stream.read_new("w", count=100, block_ms=None):
        read += entries
        await stream.ack_entries(entries)
    ids = sorted(json.loads(e.fields[EVENT_FIELD])["event_id"] for e in read)
    assert ids == sorted(f"m{n}-{i}" for n in range(16) for i in range(3))
    assert (await stream.stats()).pending == 0


async def test_a_slot_moving_is_followed_through_ask_then_moved(
    on_cluster, redis_cluster: RedisClusterNodes
) -> None:
    stream, _ = on_cluster
    # Counted, each append is a MULTI ... EXEC: under ASK it is resent whole after ASKING.
    stream.count = Accounting(stream.client, stream.name, partitions=stream.partitions).accepted
    await stream.ensure_group()
    name = stream.names[1]
    await stream.add(sites=["a"], payloads=[payload(event_id="before")])  # partition 0
    await stream.add(sites=["a"], payloads=[payload(event_id="p1-before")])  # partition 1
    source = redis_cluster.primary_of(name)
    target = next(p for p in redis_cluster.primaries() if p != source)
    slot = stream.client.keyslot(name)
    with redis_cluster.client(source) as src, redis_cluster.client(target) as dst:
        source_id = src.execute_command("CLUSTER", "MYID").decode()
        target_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        # The key is on the target now, the slot still the source's: the source answers ASK.
        await stream.add(sites=["a"], payloads=[payload(event_id="p2")])  # partition 2
        await stream.add(sites=["a"], payloads=[payload(event_id="p3")])
        await stream.add(sites=["a"], payloads=[payload(event_id="p0")])
        await stream.add(sites=["a"], payloads=[payload(event_id="p1-asked")])  # ASK, ASKING
        for port in redis_cluster.primaries() | {target}:
            with redis_cluster.client(port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    redis_cluster.wait_ok()
    for n in range(4):  # partition 1 again on the 4th: MOVED to the target
        await stream.add([payload(event_id=f"after-{n}")], sites=["a"])
    fields = [f for _, f in await stream.client.xrange(name)]
    ids = [json.loads(f[EVENT_FIELD])["event_id"] for f in fields]
    assert ids == ["p1-before", "p1-asked", "after-3"]
    assert redis_cluster.primary_of(name) == target
    today = datetime.now(UTC).date()
    assert (await day_counts(stream.client, stream.names, today, "a")).accepted == 10


def test_a_worker_killed_mid_drain_on_the_cluster_is_reclaimed(started, cluster_settings):
    kill_a_worker_mid_drain(
        started, cluster_env(cluster_settings), str(cluster_settings.database_url)
    )


def test_a_primary_failing_over_mid_drain_loses_and_doubles_nothing(
    started, cluster_settings, redis_cluster: RedisClusterNodes
) -> None:
    env = cluster_env(cluster_settings)
    ingest = start(started, "ingest", env)
    reporting = start(started, "reporting", env)
    for name in ("w1", "w2"):
        start(started, "worker", env, QUEUEFLOW_CONSUMER=name)
    events = workload(6_000, seed=5)
    sender, refused = _send_in_background(ingest.url, events)  # about 6 s
    _, victim = _owners_and_victim(cluster_settings, redis_cluster)
    frozen = next(p for p in sorted(redis_cluster.primaries()) if p != victim)
    try:
        _wait_for_progress(cluster_settings, 1_000)
        # A primary that stops answering for a while, less than the failover timeout: the
        # appends it holds time out (503 with the ids; some may have landed), are retried.
        redis_cluster.procs[frozen].send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # under the cluster's 2 s node timeout: no failover for this one
        redis_cluster.procs[frozen].send_signal(signal.SIGCONT)
        _wait_for_progress(cluster_settings, 3_000)
        redis_cluster.failover(victim)  # its replica takes over, then the old primary dies
        redis_cluster.stop_node(victim)
        sender.join(120)
        assert not sender.is_alive()
        wait_until_exact(str(cluster_settings.database_url), events)
        verify(env, events)
        day, stats = next(iter(expected_stats(events).items()))
        body = httpx.get(
            f"{reporting.url}/stats",
            params={"site_id": day[0], "date": day[1].isoformat(), "limit": 1000},
            timeout=5,
        ).json()
        assert body["total_views"] == stats["total_views"]
        for service in started:
            ready = httpx.get(f"{service.url}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
        listed = queueflow(cluster_settings, "dead-letters", "list", env=env)
        assert listed.returncode == 0 and listed.stdout.startswith("0 dead letters"), listed
        # How many 503s the outages caused depends on where the sender's requests fell
        # meanwhile (none is possible on a slow machine); the totals above hold either way.
        print(f"failover: {refused[0]} answers refused and retried on the way")
    finally:
        redis_cluster.start_node(victim)  # back as a replica, for the tests after this one
        redis_cluster.wait_ok()


async def test_only_appends_a_replica_confirmed_are_accepted_and_they_survive_a_crash(
    on_cluster, cluster_settings, redis_cluster: RedisClusterNodes
) -> None:
    plain, _ = on_cluster
    waiting = EventStream(
        plain.client, cluster_settings.model_copy(update={"redis_wait_replicas": 1})
    )
    waiting.count = Accounting(plain.client, plain.name, partitions=plain.partitions).accepted
    await plain.ensure_group()
    partition, name = next(
        (i, n)
        for i, n in enumerate(plain.names)
        if redis_cluster.primary_of(n) != redis_cluster.ports[0]
    )
    victim = redis_cluster.primary_of(name)

    async def add(stream: EventStream, event_id: str) -> None:
        stream._next_append = partition  # this round trip to the victim's partition
        await stream.add([payload(event_id=event_id)], sites=["site-1"])

    async def stored() -> list[str]:  # read afresh: the pooled connection may be the dead one
        client = connect(cluster_settings.redis_dsn(), timeout_s=5, cluster=True)
        try:
            fields = [f for _, f in await client.xrange(name)]
        finally:
            await client.aclose()
        return [json.loads(f[EVENT_FIELD])["event_id"] for f in fields]

    redis_cluster.wait_synced(redis_cluster.replica_of(victim))
    try:
        await add(waiting, "confirmed")
        with redis_cluster.replica_cut_off(victim) as replica:
            await add(plain, "unconfirmed")  # answered on the primary's word alone
            with pytest.raises(StreamUnavailable, match="0 of 1 replicas"):
                await add(waiting, "refused")  # appended, unconfirmed: refused (a 503)
            # Appends pass over that partition for a while (and any other on its primary):
            # the others take them at once.
            waiting._next_append = partition
            await asyncio.gather(
                *(waiting.add([payload(event_id=f"g{n}")], sites=["site-1"]) for n in range(20))
            )
            assert await stored() == ["confirmed", "unconfirmed", "refused"]
            # Counted as appended: the refused append too (its retry counts again).
            today = datetime.now(UTC).date()
            counted = await day_counts(plain.client, plain.names, today, "site-1")
            assert counted.accepted == 22
            redis_cluster.stop_node(victim)  # a crash: no failover first
        redis_cluster.wait_promoted(replica)
        # What only the crashed primary held went with it: the events answered on its word.
        assert await stored() == ["confirmed"]
        redis_cluster.start_node(victim)  # back, as the new primary's replica
        redis_cluster.wait_ok()
        redis_cluster.wait_synced(victim)
        await add(waiting, "after")
        assert await stored() == ["confirmed", "after"]
    finally:
        if redis_cluster.procs[victim].poll() is not None:
            redis_cluster.start_node(victim)
        redis_cluster.wait_ok()


def test_a_primary_crashing_behind_its_replica_loses_no_accepted_event(
    started, cluster_settings, redis_cluster: RedisClusterNodes
) -> None:
    env = {**cluster_env(cluster_settings), "QUEUEFLOW_REDIS_WAIT_REPLICAS": "1"}
    ingest = start(started, "ingest", env)
    workers = [start(started, "worker", env, QUEUEFLOW_CONSUMER=name) for name in ("w1", "w2")]
    events = workload(5_000, seed=7)
    sender, refused = _send_in_background(ingest.url, events)
    owners, victim = _owners_and_victim(cluster_settings, redis_cluster)
    try:
        for primary in set(owners):
            redis_cluster.wait_synced(redis_cluster.replica_of(primary))
        _wait_for_progress(cluster_settings, 1_000)
        # The victim's replica falls behind, the victim goes on taking appends for a second
        # (none confirmed: each is answered 503 and retried), then crashes; the replica that
        # never had them is promoted. The workers are frozen meanwhile, so those appends are
        # nowhere else: answered 202 on the victim's word (without WAIT) they would be lost.
        for worker in workers:
            worker.proc.send_signal(signal.SIGSTOP)
        try:
            with redis_cluster.replica_cut_off(victim) as replica:
                time.sleep(1)
                redis_cluster.stop_node(victim)
        finally:
            for worker in workers:
                worker.proc.send_signal(signal.SIGCONT)
        redis_cluster.wait_promoted(replica)
        redis_cluster.start_node(victim)  # the new primary's replica: its appends confirm
        redis_cluster.wait_ok()
        sender.join(120)
        assert not sender.is_alive()
        wait_until_exact(str(cluster_settings.database_url), events)
        verify(env, events)
        listed = queueflow(cluster_settings, "dead-letters", "list", env=env)
        assert listed.returncode == 0 and listed.stdout.startswith("0 dead letters"), listed
        print(f"crash: {refused[0]} answers refused and retried on the way")
    finally:
        if redis_cluster.procs[victim].poll() is not None:
            redis_cluster.start_node(victim)
        redis_cluster.wait_ok()


def _send_in_background(url: str, events: list[dict]) -> tuple[threading.Thread, list[int]]:
    """The events sent in 100-event batches, a pause between them, each retried until
    accepted, so that the outages a test causes fall in the middle; the list receives the
    number of refusals on the way."""
    refused: list[int] = []
    sender = threading.Thread(
        target=lambda: refused.append(send_retrying(url, events, pause_s=0.1))
    )
    sender.start()
    return sender, refused


def _owners_and_victim(settings: Settings, cluster: RedisClusterNodes) -> tuple[list[int], int]:
    """The primaries holding the 4 partitions, and one of them other than the node the
    services were started from."""
    owners = [cluster.primary_of(name) for name in partition_names(settings.stream, 4)]
    return owners, next(p for p in owners if p != cluster.ports[0])


def _wait_for_progress(settings: Settings, stored: int) -> None:
    deadline = time.monotonic() + 60
    while test_faults.stored_events(str(settings.database_url)) < stored:
        assert time.monotonic() < deadline
        time.sleep(0.1)
