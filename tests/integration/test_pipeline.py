"""The whole pipeline as users run it: `queueflow ingest`, `queueflow reporting` and two
`queueflow worker` processes against real servers, driven over HTTP, checked exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from queueflow.core.config import Settings
from tests.helpers import Service, expected_stats, service_env, workload


@pytest.fixture
def services(settings: Settings) -> Iterator[dict[str, Service]]:
    env = service_env(settings)
    started: dict[str, Service] = {}
    try:
        started["ingest"] = Service("ingest", env)
        started["reporting"] = Service("reporting", env)
        for i in range(2):
            started[f"worker{i}"] = Service("worker", {**env, "QUEUEFLOW_CONSUMER": f"w{i}"})
        for service in started.values():
            service.wait_healthy()
        yield started
    finally:
        codes = {name: service.stop() for name, service in started.items()}
        assert all(code == 0 for code in codes.values()), codes


def fetch(reporting: Service, site: str, day: str) -> dict:
    params = {"site_id": site, "date": day, "limit": 1000}
    body = httpx.get(f"{reporting.url}/stats", params=params, timeout=5).json()
    return {k: body[k] for k in ("total_views", "unique_users", "top_paths")}


def test_every_figure_is_exact_with_two_workers_and_resent_duplicates(services) -> None:
    events = workload(4000)
    with httpx.Client(base_url=services["ingest"].url, timeout=10) as client:
        for i in range(0, 3000, 100):
            assert client.post("/events", json=events[i : i + 100]).status_code == 202
        for e in events[3000:]:
            assert client.post("/event", json=e).status_code == 202
        # Anything invalid in a batch enqueues nothing of it.
        poisoned = [*events[:10], {**events[0], "path": "relative"}]
        assert client.post("/events", json=poisoned).status_code == 422

    expected = {
        (site, day.isoformat()): stats for (site, day), stats in expected_stats(events).items()
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        actual = {key: fetch(services["reporting"], *key) for key in expected}
        if actual == expected:
            break
        time.sleep(0.25)
    assert actual == expected
    assert sum(s["total_views"] for s in expected.values()) > 2000


def test_an_event_shows_up_in_stats_within_a_second(services) -> None:
    now = datetime.now(UTC)
    body = {
        "site_id": "fresh",
        "event_type": "page_view",
        "path": "/",
        "user_id": "u",
        "timestamp": now.isoformat(),
    }
    assert httpx.post(f"{services['ingest'].url}/event", json=body).status_code == 202
    sent = time.monotonic()
    while fetch(services["reporting"], "fresh", now.date().isoformat())["total_views"] != 1:
        assert time.monotonic() - sent < 1.0
        time.sleep(0.02)
