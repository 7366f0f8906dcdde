"""What the partitioned-stream and Redis Cluster tests share: the group's pending entries per
partition read from outside, a client that retries refused batches as a real one does, and
the kill-a-worker-mid-drain scenario run on one server and on the cluster alike."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from queueflow.core.stream import partition_names
from tests.helpers import Service, send, wait_until_exact, workload
from tests.integration.test_faults import kill_a_worker_holding_a_batch, start, verify


def names_of(env: dict[str, str]) -> list[str]:
    return partition_names(env["QUEUEFLOW_STREAM"], int(env["QUEUEFLOW_STREAM_PARTITIONS"]))


def sync_client(env: dict[str, str]) -> Any:
    if env.get("QUEUEFLOW_REDIS_CLUSTER") == "true":
        return redis.RedisCluster.from_url(env["REDIS_URL"], socket_timeout=5)
    return redis.from_url(env["REDIS_URL"], socket_timeout=5)


def pending_by_consumer(env: dict[str, str]) -> dict[str, dict[str, int]]:
    """partition -> consumer -> entries it holds unacknowledged."""
    client = sync_client(env)
    try:
        found = {}
        for name in names_of(env):
            summary = client.xpending(name, env["QUEUEFLOW_GROUP"])
            found[name] = {c["name"].decode(): c["pending"] for c in summary["consumers"] or ()}
        return found
    finally:
        client.close()


def held_by(env: dict[str, str], consumer: str) -> int:
    return sum(held.get(consumer, 0) for held in pending_by_consumer(env).values())


def send_retrying(
    url: str, events: list[dict[str, Any]], batch: int = 100, pause_s: float = 0.0
) -> int:
    """POST events in batches, each resent with the same event ids until it is accepted
    (after a 503, or a connection that failed): what the API asks of a client. Returns how
    many answers were refused on the way."""
    refused = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(0, len(events), batch):
            while True:
                try:
                    response = client.post("/events", json=events[i : i + batch])
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 202:
                    break
                assert response is None or response.status_code == 503, response.text
                refused += 1
                time.sleep(0.05)
            time.sleep(pause_s)
    return refused


def kill_a_worker_mid_drain(started: list[Service], env: dict[str, str], database_url: str) -> None:
    """Two workers drain while ingest takes a workload with resends; worker A is frozen the
    moment it holds entries and SIGKILLed there; B reclaims them on every partition. Every
    total equals the recount, and A comes back to find nothing of its own."""
    events = workload(8_000, seed=1)
    ingest, b, _, _ = kill_a_worker_holding_a_batch(started, env, events, database_url, held_by)
    assert b.metric("queueflow_worker_events_reclaimed_total") > 0
    start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-a")
    more = workload(1_000, seed=2)
    send(ingest.url, more)
    wait_until_exact(database_url, events + more)
    deadline = time.monotonic() + 20
    while any(sum(held.values()) for held in pending_by_consumer(env).values()):
        assert time.monotonic() < deadline, pending_by_consumer(env)
        time.sleep(0.05)
    verify(env, events + more)
