"""Fault injection with real processes and real servers: workers killed and stopped,
PostgreSQL connections terminated and the server restarted, Redis stopped and restarted,
poison entries, a long run with trimming and a backlog over its limit. Each test ends with
exact totals and `queueflow verify`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from queueflow.core.config import Settings
from queueflow.core.stream import EVENT_FIELD
from queueflow.embedded import free_port, start_postgres, start_valkey
from tests.conftest import with_database
from tests.helpers import Service, send, service_env, wait_until_exact, workload

QUICK = {
    "QUEUEFLOW_CLAIM_IDLE_MS": "1000",
    "QUEUEFLOW_RECLAIM_INTERVAL_MS": "200",
    "QUEUEFLOW_TRIM_INTERVAL_MS": "200",
    "QUEUEFLOW_BATCH_SIZE": "200",
    "QUEUEFLOW_BLOCK_MS": "200",
}


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {**service_env(settings), **QUICK}


@pytest.fixture
def started() -> Iterator[list[Service]]:
    """Every service a test starts; whatever is still running is stopped at the end."""
    services: list[Service] = []
    yield services
    for service in services:
        if service.proc.poll() is None:
            service.stop()


def start(started: list[Service], command: str, env: dict[str, str], **extra: str) -> Service:
    service = Service(command, {**env, **extra})
    started.append(service)
    return service.wait_healthy()


def verify(env: dict[str, str], events: list[dict]) -> None:
    days = sorted(e["timestamp"][:10] for e in events)
    run = subprocess.run(
        [sys.executable, "-m", "queueflow", "verify", "--from", "2000-01-01", "--to", "2100-01-01"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert days  # the workload spans these days


def pending_of(env: dict[str, str], consumer: str) -> int:
    client = redis.from_url(env["REDIS_URL"])
    try:
        summary = client.xpending(env["QUEUEFLOW_STREAM"], env["QUEUEFLOW_GROUP"])
        return {c["name"].decode(): c["pending"] for c in summary["consumers"]}.get(consumer, 0)
    finally:
        client.close()


def sql(database_url: str, statement: str) -> Any:
    """Run one query and return its first value: a failure raises, never reads as 0."""
    return asyncio.run(_on_connection(database_url, lambda conn: conn.fetchval(statement)))


def sql_script(database_url: str, statements: str) -> None:
    """Run statements (several, separated by semicolons); a failure raises."""
    asyncio.run(_on_connection(database_url, lambda conn: conn.execute(statements)))


async def _on_connection(database_url: str, use: Any) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await use(conn)
    finally:
        await conn.close()


def stored_events(database_url: str) -> int:
    return sql(database_url, "SELECT count(*) FROM events")


def kill_a_worker_holding_a_batch(
    started: list[Service],
    env: dict[str, str],
    events: list[dict],
    database_url: str,
    held: Callable[[dict[str, str], str], int],
) -> tuple[Service, Service, float, float]:
    """Ingest and workers A and B; `events` sent while both work, A frozen at a moment it
    holds a batch (`held`: the entries a consumer holds) and killed there, the rest sent.
    Returns (ingest, B, seconds to exact after the kill, when A was killed) once every total
    is exact and A holds nothing more."""
    ingest = start(started, "ingest", env)
    a = start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-a")
    b = start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-b")
    batches = [events[i : i + 200] for i in range(0, len(events), 200)]
    sent = 0
    while sent < len(batches):
        send(ingest.url, batches[sent])
        sent += 1
        a.proc.send_signal(signal.SIGSTOP)
        if held(env, "worker-a") > 0:
            break
        a.proc.send_signal(signal.SIGCONT)
    assert sent < len(batches), "never caught worker A holding a batch"
    a.kill()
    send(ingest.url, [e for batch in batches[sent:] for e in batch])
    killed = time.monotonic()
    took = wait_until_exact(database_url, events)
    while held(env, "worker-a") > 0:  # A may have committed its batch but not acked it
        assert time.monotonic() - killed < 20
        time.sleep(0.05)
    return ingest, b, took, killed


def test_a_worker_killed_mid_batch_is_reclaimed_by_the_other(started, env, settings) -> None:
    events = workload(12_000, seed=1)
    # Send while both work; freeze A at a moment it holds a batch, then kill it there.
    ingest, b, took, killed = kill_a_worker_holding_a_batch(
        started, env, events, str(settings.database_url), pending_of
    )
    assert b.metric("queueflow_worker_events_reclaimed_total") > 0
    print(
        f"exact {took:.1f}s after the kill; A's entries reclaimed after "
        f"{time.monotonic() - killed:.1f}s (claim idle time 1 s)"
    )
    # A comes back under the same name: nothing left for it, nothing counted twice.
    start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-a")
    more = workload(1_000, seed=2)
    send(ingest.url, more)
    wait_until_exact(str(settings.database_url), events + more)
    verify(env, events + more)


def test_sigterm_mid_drain_finishes_the_batch_in_hand_and_exits_0(started, env, settings):
    events = workload(8_000, seed=3)
    send(start(started, "ingest", env).url, events)
    a = start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-a")
    while stored_events(str(settings.database_url)) == 0:
        time.sleep(0.01)
    stopping = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - stopping < 20  # QUEUEFLOW_SHUTDOWN_TIMEOUT
    assert pending_of(env, "worker-a") == 0  # its batch was committed and acknowledged
    start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-b")
    wait_until_exact(str(settings.database_url), events)
    verify(env, events)


def test_postgres_restarted_and_connections_terminated_mid_drain(
    started, env, settings, tmp_path: Path
) -> None:
    postgres = start_postgres(tmp_path / "pg", durable=False)
    try:
        database_url = with_database(postgres.url, "postgres")
        env = {**env, "DATABASE_URL": database_url}
        events = workload(40_000, seed=4)
        send(start(started, "ingest", env).url, events)
        for name in ("worker-a", "worker-b"):
            start(started, "worker", env, QUEUEFLOW_CONSUMER=name)
        while stored_events(database_url) == 0:
            time.sleep(0.01)
        postgres.stop()  # fast shutdown mid-drain: every connection drops
        time.sleep(1.0)
        postgres = start_postgres(tmp_path / "pg", port=postgres.port, durable=False)
        back = time.monotonic()
        assert stored_events(database_url) < len(events)  # the drain is still under way
        terminate = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        for _ in range(5):
            sql(database_url, terminate)
            time.sleep(0.1)
        wait_until_exact(database_url, events)
        print(f"exact {time.monotonic() - back:.1f}s after PostgreSQL came back")
        verify(env, events)
    finally:
        for service in started:
            service.stop()
        postgres.stop()


def test_redis_stopped_and_restarted(started, env, settings, tmp_path: Path) -> None:
    valkey = start_valkey(tmp_path / "valkey")
    try:
        env = {**env, "REDIS_URL": valkey.url}
        ingest = start(started, "ingest", env)
        for name in ("worker-a", "worker-b"):
            start(started, "worker", env, QUEUEFLOW_CONSUMER=name)
        before = workload(3_000, seed=5)
        send(ingest.url, before)
        valkey.stop()  # a clean stop writes the AOF
        asked = time.monotonic()
        response = httpx.post(f"{ingest.url}/event", json=before[0], timeout=5)
        assert response.status_code == 503 and response.headers["retry-after"]
        assert time.monotonic() - asked < 2
        assert httpx.get(f"{ingest.url}/readyz").status_code == 503
        valkey = start_valkey(tmp_path / "valkey", port=valkey.port)
        deadline = time.monotonic() + 10
        while httpx.get(f"{ingest.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        after = workload(3_000, seed=6)
        send(ingest.url, after)
        wait_until_exact(str(settings.database_url), before + after)
        verify(env, before + after)
    finally:
        for service in started:
            service.stop()
        valkey.stop()


def test_poison_is_dead_lettered_and_the_rest_counted(started, env, settings) -> None:
    database_url = str(settings.database_url)
    sql(database_url, "ALTER TABLE events ADD CONSTRAINT no_poison CHECK (user_id <> 'poison')")
    events = workload(2_000, seed=7)
    poisoned = {**events[0], "event_id": "poison-row", "user_id": "poison"}
    r = redis.from_url(env["REDIS_URL"])
    ingest = start(started, "ingest", env)
    send(ingest.url, events[:1000])
    r.xadd(env["QUEUEFLOW_STREAM"], {EVENT_FIELD: b"{garbage"})
    r.xadd(env["QUEUEFLOW_STREAM"], {b"no-event-field": b"1"})
    send(ingest.url, [poisoned, *events[1000:]])
    start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-a")
    wait_until_exact(database_url, events)
    reasons = sorted(
        f[b"reason"].decode().split(":")[0]
        for _, f in r.xrange(env["QUEUEFLOW_DEAD_LETTER_STREAM"])
    )
    r.close()
    assert reasons == ["rejected by database", "undecodable", "undecodable"]
    verify(env, events)


def test_a_long_run_keeps_the_stream_and_redis_memory_bounded(started, env, settings) -> None:
    r = redis.from_url(env["REDIS_URL"])
    ingest = start(started, "ingest", env)
    for name in ("worker-a", "worker-b"):
        start(started, "worker", env, QUEUEFLOW_CONSUMER=name)
    sent: list[dict] = []
    lengths, memory = [], []
    for second in range(15):
        chunk = workload(2_000, seed=100 + second)
        send(ingest.url, chunk)
        sent += chunk
        lengths.append(r.xlen(env["QUEUEFLOW_STREAM"]))
        memory.append(r.info("memory")["used_memory"])
        time.sleep(0.5)
    wait_until_exact(str(settings.database_url), sent)
    time.sleep(0.5)
    final_length = r.xlen(env["QUEUEFLOW_STREAM"])
    r.close()
    print(f"stream length per second: {lengths}, final {final_length}")
    print(f"used_memory MB per second: {[round(m / 2**20, 1) for m in memory]}")
    assert max(lengths) < 10_000  # 30,000 events passed through
    assert final_length < 1_000
    verify(env, sent)


def test_backlog_over_the_limit_refuses_then_resumes(started, env, settings) -> None:
    ingest = start(
        started, "ingest", env, QUEUEFLOW_BACKLOG_LIMIT="1000", QUEUEFLOW_BACKLOG_REFRESH_MS="100"
    )
    accepted: list[dict] = []
    refused = None
    with httpx.Client(base_url=ingest.url, timeout=10) as client:
        for i, batch in enumerate(
            workload(6_000, seed=8)[j : j + 200] for j in range(0, 6000, 200)
        ):
            response = client.post("/events", json=batch)
            if response.status_code == 503:
                refused = response
                break
            assert response.status_code == 202
            accepted += batch
            time.sleep(0.05 if i > 3 else 0)
    assert refused is not None and int(refused.headers["retry-after"]) > 0
    start(started, "worker", env, QUEUEFLOW_CONSUMER="worker-a")
    deadline = time.monotonic() + 20
    while httpx.post(f"{ingest.url}/events", json=workload(1, seed=9)).status_code != 202:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    wait_until_exact(str(settings.database_url), [*accepted, *workload(1, seed=9)])
    verify(env, accepted)


def test_ingest_stopped_under_load_loses_no_accepted_event(started, env) -> None:
    ingest = start(started, "ingest", env)
    accepted: list[str] = []
    stopping = threading.Event()

    def client_loop(seed: int) -> None:
        with httpx.Client(base_url=ingest.url, timeout=5) as client:
            for event in workload(2_000, seed=seed):
                if stopping.is_set() and ingest.proc.poll() is not None:
                    return
                try:
                    response = client.post("/event", json=event)
                except httpx.HTTPError:
                    continue  # refused or cut while stopping: the client would retry
                if response.status_code == 202:
                    accepted.append(response.json()["event_id"])

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stopping.set()
    assert ingest.stop() == 0
    for thread in threads:
        thread.join()
    r = redis.from_url(env["REDIS_URL"])
    stored = {json.loads(f[EVENT_FIELD])["event_id"] for _, f in r.xrange(env["QUEUEFLOW_STREAM"])}
    r.close()
    assert accepted and set(accepted) <= stored


def test_a_worker_starts_and_reports_a_database_that_is_down(started, env) -> None:
    down = {**env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}
    worker = start(started, "worker", down, QUEUEFLOW_CONSUMER="patient")
    time.sleep(1.0)
    assert worker.proc.poll() is None  # waiting with backoff, not crash-looping
    ready = httpx.get(f"{worker.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["postgres"].startswith("unavailable")
    assert ready.json()["checks"]["redis"] == "ok"
    stopping = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - stopping < 5  # no waiting out the shutdown timeout


def test_a_worker_whose_batches_the_database_refuses_says_so_in_readyz(
    started, env, settings
) -> None:
    """PostgreSQL answers pings but refuses every batch (as a role without INSERT would):
    /readyz and the retrying gauge say what the worker retries on, and nothing is lost."""
    refuse_all = """
        CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'permission denied for table events' USING ERRCODE = '42501';
        END $$;
        CREATE TRIGGER refuse_all BEFORE INSERT ON events
            FOR EACH STATEMENT EXECUTE FUNCTION refuse_all();
    """
    sql_script(settings.database_dsn(), refuse_all)
    ingest = start(started, "ingest", env)
    worker = start(started, "worker", env)
    events = workload(50)
    send(ingest.url, events)
    deadline = time.monotonic() + 20
    while (ready := httpx.get(f"{worker.url}/readyz")).status_code == 200:
        assert time.monotonic() < deadline, "never said it was retrying"
        time.sleep(0.1)
    checks = ready.json()["checks"]
    assert checks["postgres"] == "ok" and checks["redis"] == "ok"
    assert checks["consumer"].startswith("unavailable: retrying postgres: SQLSTATE 42501")
    assert worker.metric('queueflow_worker_retrying{dependency="postgres"}') == 1
    sql(settings.database_dsn(), "DROP TRIGGER refuse_all ON events")
    wait_until_exact(settings.database_dsn(), events)
    assert httpx.get(f"{worker.url}/readyz").status_code == 200
    assert worker.metric('queueflow_worker_retrying{dependency="postgres"}') == 0
    assert worker.metric('queueflow_worker_events_dead_lettered_total{reason="rejected"}') == 0
