"""Every stats answer says how fresh it is: with the workers paused the queue shows in
lag_entries and as_of stays before the waiting events; once they drain, as_of moves past them
and the day completes; with Redis unreachable the answer still comes, saying it cannot tell."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx

from queueflow.core.config import Settings
from queueflow.embedded import free_port
from tests.helpers import Service, event, send, service_env


def stats(reporting: Service, route: str = "/stats", **params: str) -> dict:
    return httpx.get(
        f"{reporting.url}{route}", params={"site_id": "fresh.example", **params}
    ).json()


def every_route(reporting: Service, day: str) -> list[dict]:
    """The range routes' answers for `day` (each carries the same freshness fields)."""
    span = {"from": day, "to": day}
    return [
        stats(reporting, **span),
        stats(reporting, "/stats/timeseries", interval="hour", **span),
        stats(reporting, "/stats/breakdown", by="path", **span),
    ]


def wait_for(reporting: Service, check, timeout_s: float = 20, **params: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while not check(answer := stats(reporting, **params)):
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    return answer


def test_workers_paused_then_resumed(settings: Settings) -> None:
    env = {**service_env(settings), "QUEUEFLOW_BLOCK_MS": "100"}
    started = [Service("ingest", env).wait_healthy(), Service("reporting", env).wait_healthy()]
    ingest, reporting = started
    try:
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        before = datetime.now(UTC)
        send(ingest.url, [event(site_id="fresh.example", user_id=f"u{i}") for i in range(30)])
        waiting = wait_for(reporting, lambda a: a["lag_entries"] == 30)
        assert waiting["total_views"] == 0 and waiting["complete"] is False
        today = datetime.now(UTC).date().isoformat()
        for answer in every_route(reporting, today):  # the same queue, whatever the route
            assert answer["lag_entries"] == 30 and answer["complete"] is False, answer
        assert stats(reporting, "/stats/realtime")["unique_users"] == 0
        as_of = datetime.fromisoformat(waiting["as_of"])
        assert as_of <= datetime.now(UTC) and as_of >= before - timedelta(seconds=1)
        # Yesterday ended before the oldest waiting event: complete even now.
        assert stats(reporting, date=yesterday)["complete"] is (
            as_of >= datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
        )
        started.append(Service("worker", env).wait_healthy())  # the workers resume
        drained = wait_for(reporting, lambda a: a["lag_entries"] == 0 and a["total_views"] == 30)
        assert datetime.fromisoformat(drained["as_of"]) > as_of
        assert drained["complete"] is False  # today has not ended
        assert stats(reporting, date=yesterday)["complete"] is True
        today = datetime.now(UTC).date().isoformat()
        for answer in every_route(reporting, today):
            assert answer["lag_entries"] == 0 and answer["complete"] is False, answer
        assert all(a["complete"] for a in every_route(reporting, yesterday))
        assert stats(reporting, "/stats/realtime")["unique_users"] == 30
    finally:
        for service in started:
            assert service.stop() == 0


def test_without_redis_the_answer_comes_and_says_it_cannot_tell(settings: Settings) -> None:
    env = {**service_env(settings), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    reporting = Service("reporting", env).wait_healthy()
    try:
        answer = stats(reporting)
        assert answer["as_of"] is None and answer["lag_entries"] is None
        assert answer["complete"] is False and answer["total_views"] == 0
        counts = httpx.get(f"{reporting.url}/stats/ingest", params={"site_id": "s"})
        assert counts.status_code == 503  # they live in Redis only: said, never zeros
    finally:
        assert reporting.stop() == 0
