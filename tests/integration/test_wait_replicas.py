"""QUEUEFLOW_REDIS_WAIT_REPLICAS on one Redis primary (a Valkey of its own, and a replica
started beside it): ingest answers 202 only for appends a replica confirmed, 503 with the
event ids for the others, and the client's retry with those ids is counted once."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

from queueflow.core.config import Settings
from queueflow.embedded import start_valkey
from tests.helpers import Service, service_env, wait_until_exact, workload
from tests.integration import test_faults
from tests.integration.test_faults import QUICK, start, verify

started = test_faults.started  # the fixture: every service a test starts, stopped at its end


def test_only_replicated_appends_are_accepted_and_the_refused_ones_count_once(
    started: list[Service], settings: Settings, tmp_path: Path
) -> None:
    primary = start_valkey(tmp_path / "primary")
    replica = None
    env = {**service_env(settings), **QUICK, "REDIS_URL": primary.url}
    env["QUEUEFLOW_REDIS_WAIT_REPLICAS"] = "1"
    try:
        ingest = start(started, "ingest", env)
        events = workload(300, seed=3)
        with httpx.Client(base_url=ingest.url, timeout=10) as client:
            # No replica: every append waits half the Redis timeout, then is refused.
            refused = client.post("/events", json=events)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            ids = refused.json()["event_ids"]
            assert len(ids) == len(events) and all(ids)
            # ... though appended: with the primary alive the events are still in the stream.
            with redis.Redis(port=primary.port) as r:
                assert r.xlen(settings.stream) == len(events)
            replica = start_valkey(tmp_path / "replica", replica_of=primary.url)
            for event, event_id in zip(events, ids, strict=True):
                event["event_id"] = event_id  # the retry carries the ids the 503 named
            accepted = client.post("/events", json=events)
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["event_ids"] == ids
            one = client.post("/event", json=workload(1, seed=4)[0])
            assert one.status_code == 202, one.text
        with redis.Redis(port=replica.port) as r:
            assert r.xlen(settings.stream) == 2 * len(events) + 1  # the replica has them all
        start(started, "worker", env)
        everything = [*events, {**workload(1, seed=4)[0], "event_id": one.json()["event_id"]}]
        wait_until_exact(str(settings.database_url), everything)
        verify(env, everything)
    finally:
        primary.stop()
        if replica is not None:
            replica.stop()
