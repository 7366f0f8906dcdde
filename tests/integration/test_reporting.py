"""GET /stats over a real port, from the aggregate tables."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from queueflow.core.config import Settings
from queueflow.core.events import Event, encode_event
from queueflow.core.store import EventStore, create_pool, stored_event
from queueflow.reporting.app import create_app
from tests.helpers import Service, serve, service_env
from tests.query_strings import query_strings


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
    answer = response.json()
    assert answer.pop("complete") is True and answer.pop("lag_entries") == 0  # nothing queued
    assert answer.pop("as_of").endswith("Z")
    assert answer == {
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


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("site_id=s&date=2026-05-01&to=2026-05-04", "date"),  # a day and a range at once
        ("site_id=s&site_id=other", "site_id"),  # was the last one, silently
        ("site_id=%00", "site_id"),  # was a 500: PostgreSQL refuses NUL
        ("site_id=s%1B", "site_id"),
        ("site_id=" + "%C3%A9" * 129, "site_id"),  # 258 bytes
        ("site_id=s&limit=5_0", "limit"),  # was read as 50
        ("site_id=s&limit=%2B5", "limit"),
        ("site_id=s&limit=5.0", "limit"),
        ("site_id=s&limit=" + quote("\u0665"), "limit"),  # ARABIC-INDIC DIGIT FIVE
        ("site_id=s&date=" + quote("\uff12\uff10\uff12\uff16-05-04"), "date"),  # full-width
        ("site_id=s&date=1700000000", "date"),
    ],
)
async def test_hostile_queries_are_422_naming_the_parameter(client, query: str, name: str) -> None:
    response = await client.get(f"/stats?{query}")
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]][:1] == [["query", name]]
    assert {"type", "msg", "input"} <= set(response.json()["detail"][0])


async def test_a_site_id_of_256_bytes_is_answered(client) -> None:
    response = await client.get("/stats?site_id=" + "%C3%A9" * 128 + "&date=2026-05-04")
    assert response.status_code == 200 and response.json()["site_id"] == "\u00e9" * 128


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_take_no_parameters(client, path: str) -> None:
    response = await client.get(path, params={"verbose": "1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "verbose"]


async def test_trailing_slash_is_404_without_a_location(client) -> None:
    response = await client.get("/stats/?site_id=s", headers={"host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers


@pytest.fixture
def reporting_process(settings: Settings) -> Iterator[httpx.Client]:
    """`queueflow reporting` as deployed, over a real socket (uvicorn's parser included)."""
    service = Service("reporting", service_env(settings)).wait_healthy()
    try:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            yield client
    finally:
        assert service.stop() == 0


KEYS = st.one_of(st.sampled_from(["site_id", "date", "limit"]), st.text(max_size=8))
VALUES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["s", "5", "1000", "2026-05-04", "2026-02-30", "\x00", "\x85", "\x7f"]),
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),
)


QUERIES = query_strings(KEYS, VALUES)


@hypothesis_settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(["/stats", "/readyz", "/healthz"]), query=QUERIES)
def test_no_query_string_is_a_server_error(reporting_process, path: str, query: str) -> None:
    """Against real PostgreSQL: whatever a client writes in the query string, 200 or 4xx."""
    response = reporting_process.get(f"{path}?{query}")
    assert response.status_code < 500, (query, response.text)


async def test_percent_escapes_that_are_not_utf8_are_422(settings: Settings) -> None:
    """`%FF` would otherwise be read as U+FFFD and quietly name another site."""
    async with serve(create_app(settings)) as client:
        for query in ("site_id=a%FF", "site_id=%ED%A0%80", "a%FF=1"):
            reply = await client.get(f"/stats?{query}")
            assert reply.status_code == 422, query
        assert (await client.get("/stats?site_id=%C3%A9")).status_code == 200  # é is fine
