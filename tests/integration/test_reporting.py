"""GET /stats over a real port, from the aggregate tables."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from queueflow.core.config import Settings
from queueflow.core.events import Event, encode_event
from queueflow.core.store import EventStore, create_pool, stored_event
from queueflow.reporting.app import create_app
from tests.helpers import serve


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as client:
        yield client


async def seed(database_url: str, rows: list[tuple[str, str, str, str, datetime]]) -> None:
    pool = await create_pool(database_url, max_size=1)
    await EventStore(pool).save_batch(
        [
            stored_event(
                encode_event(Event(site, kind, path, user, ts, event_id=f"e{i}")),
                int(time.time() * 1000),
            )
            for i, (site, kind, path, user, ts) in enumerate(rows)
        ]
    )
    await pool.close()


async def test_stats_for_a_day(client, database_url: str) -> None:
    day = datetime(2026, 5, 4, 12, tzinfo=UTC)
    await seed(
        database_url,
        [
            ("s", "page_view", "/a", "u1", day),
            ("s", "page_view", "/a", "u2", day),
            ("s", "page_view", "/b", "u1", day),
            ("s", "click", "/b", "u3", day),
            ("other", "page_view", "/a", "u1", day),
        ],
    )
    response = await client.get("/stats", params={"site_id": "s", "date": "2026-05-04"})
    assert response.status_code == 200
    assert response.json() == {
        "site_id": "s",
        "date": "2026-05-04",
        "total_views": 3,
        "unique_users": 3,
        "top_paths": [{"path": "/a", "views": 2}, {"path": "/b", "views": 1}],
    }
    limited = await client.get("/stats", params={"site_id": "s", "date": "2026-05-04", "limit": 1})
    assert limited.json()["top_paths"] == [{"path": "/a", "views": 2}]


async def test_date_defaults_to_today_utc(client, database_url: str) -> None:
    await seed(database_url, [("s", "page_view", "/", "u", datetime.now(UTC))])
    body = (await client.get("/stats", params={"site_id": "s"})).json()
    assert body["date"] == datetime.now(UTC).date().isoformat()
    assert body["total_views"] == 1


async def test_no_data_is_zeros_not_404(client) -> None:
    response = await client.get("/stats", params={"site_id": "nobody", "date": "2020-01-01"})
    assert response.status_code == 200
    assert response.json()["total_views"] == 0 and response.json()["top_paths"] == []


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"site_id": ""},
        {"site_id": "s", "date": "2026-13-01"},
        {"site_id": "s", "date": "2026-02-30"},
        {"site_id": "s", "date": "yesterday"},
        {"site_id": "s", "date": "20260101"},
        {"site_id": "s", "limit": 0},
        {"site_id": "s", "limit": 1001},
        {"site_id": "s", "limit": "ten"},
    ],
)
async def test_bad_queries_are_422(client, params: dict) -> None:
    response = await client.get("/stats", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


async def test_probes(client) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok"}
