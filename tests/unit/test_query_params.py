"""Reporting's query-string contract, in-process with a stand-in store (no servers): a route
takes exactly the parameters it declares, once each, without control characters, integers and
days in ASCII digits, and no query string a client can send is a 5xx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import date
from types import SimpleNamespace
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import Depends, FastAPI, Query
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from queueflow.core.config import load_settings
from queueflow.core.query_params import CONTROL_CHARACTERS, declared_query
from queueflow.reporting.app import MAX_SITE_ID_BYTES, ReportingState, create_app
from queueflow.reporting.freshness import Watermark
from tests.query_strings import query_strings

CONTROL = [chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]]


class Store:
    """Answers like an empty database, and fails (a 500) on what PostgreSQL would refuse."""

    async def totals(self, site_id: str, first: date, last: date, limit: int) -> Any:
        assert isinstance(first, date) and first <= last and 1 <= limit <= 1000
        assert not CONTROL_CHARACTERS.search(site_id)
        assert 1 <= len(site_id.encode()) <= MAX_SITE_ID_BYTES
        return SimpleNamespace(views=0, unique_users=0, top_paths=[])

    async def ping(self) -> None:
        return None


def reporting_app() -> FastAPI:
    return create_app(
        load_settings(redis_url="redis://127.0.0.1:1", database_url="postgresql://u@127.0.0.1:1/d")
    )


class Client:
    """A synchronous client for an app in-process (hypothesis runs synchronous tests), with the
    stand-in store where the lifespan would put the real one. An app's exception is a 500."""

    def __init__(self, app: FastAPI) -> None:
        async def with_store(scope, receive, send) -> None:
            unknown = Watermark(None, timeout_s=1)  # no Redis: freshness unknown
            scope["state"] = {ReportingState.KEY: ReportingState(Store(), unknown, None)}
            await app(scope, receive, send)

        transport = httpx.ASGITransport(with_store, raise_app_exceptions=False)
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=transport, base_url="http://reporting")

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.get(url, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


@contextlib.contextmanager
def client_for(app: FastAPI) -> Iterator[Client]:
    client = Client(app)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with client_for(reporting_app()) as client:
        yield client


def errors(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    return [(e["loc"][1], e["type"]) for e in response.json()["detail"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # unknown parameters: never ignored
        (
            "site_id=a&since=2026-01-01&until=2026-01-31",
            [("since", "extra_forbidden"), ("until", "extra_forbidden")],
        ),
        # ranges: from after to, date with a range, longer than the limit
        ("site_id=a&from=2026-02-01&to=2026-01-31", [("from", "value_error")]),
        ("site_id=a&date=2026-01-01&to=2026-01-31", [("date", "value_error")]),
        ("site_id=a&from=2024-01-01&to=2026-01-31", [("to", "value_error")]),
        # the calendar's ends, which asyncpg would send as -infinity and infinity
        ("site_id=a&date=9999-12-31", [("date", "date_out_of_range")]),
        ("site_id=a&from=0001-01-01&to=0001-01-02", [("from", "date_out_of_range")]),
        ("site_id=a&Site_id=b", [("Site_id", "extra_forbidden")]),
        ("site_id=a&=x", [("", "extra_forbidden")]),
        ("site_id=a&limit=5&format=xml", [("format", "literal_error")]),
        # repeated parameters: not the last one silently
        ("site_id=a&site_id=b", [("site_id", "duplicate_parameter")]),
        ("site_id=a&limit=1&limit=2", [("limit", "duplicate_parameter")]),
        ("site_id=a&date=2026-01-01&date=2026-01-01", [("date", "duplicate_parameter")]),
        # control characters (PostgreSQL refuses NUL: it was a 500)
        ("site_id=%00", [("site_id", "string_pattern_mismatch")]),
        ("site_id=a%0Ab", [("site_id", "string_pattern_mismatch")]),
        ("site_id=a%C2%85", [("site_id", "string_pattern_mismatch")]),  # U+0085
        ("site_id=a%7F", [("site_id", "string_pattern_mismatch")]),
        # site_id over 256 UTF-8 bytes (128 "é" = 256 bytes passes, below)
        ("site_id=" + "%C3%A9" * 129, [("site_id", "string_too_long")]),
        ("site_id=" + "a" * 257, [("site_id", "string_too_long")]),
        # integers: ASCII digits only
        ("site_id=a&limit=5_0", [("limit", "int_parsing")]),
        ("site_id=a&limit=%2B5", [("limit", "int_parsing")]),
        ("site_id=a&limit=+5", [("limit", "int_parsing")]),  # "+" is a space
        ("site_id=a&limit=5%20", [("limit", "int_parsing")]),
        ("site_id=a&limit=-5", [("limit", "int_parsing")]),
        ("site_id=a&limit=5.0", [("limit", "int_parsing")]),
        ("site_id=a&limit=0x5", [("limit", "int_parsing")]),
        ("site_id=a&limit=1e2", [("limit", "int_parsing")]),
        ("site_id=a&limit=" + quote("\u0665"), [("limit", "int_parsing")]),  # Arabic-Indic 5
        ("site_id=a&limit=" + quote("\uff15"), [("limit", "int_parsing")]),  # full-width 5
        ("site_id=a&limit=", [("limit", "int_parsing")]),
        ("site_id=a&limit=" + "9" * 5000, [("limit", "int_parsing_size")]),
        # days: YYYY-MM-DD in ASCII digits, a real calendar day
        ("site_id=a&date=" + quote("\uff12\uff10\uff12\uff16-01-01"), [("date", "date_parsing")]),
        (
            "site_id=a&date=" + quote("\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661"),
            [("date", "date_parsing")],
        ),
        ("site_id=a&date=0", [("date", "date_parsing")]),
        ("site_id=a&date=1700000000", [("date", "date_parsing")]),
        ("site_id=a&date=2026-01-01T00:00:00Z", [("date", "date_parsing")]),
        ("site_id=a&date=2026-01-01%0A", [("date", "string_pattern_mismatch")]),
        ("site_id=a&date=2026-02-30", [("date", "date_from_datetime_parsing")]),
        ("site_id=a&date=", [("date", "date_parsing")]),
    ],
)
def test_bad_query_strings_are_422_naming_the_parameter(
    client: Client, query: str, expected: list
) -> None:
    assert errors(client.get(f"/stats?{query}")) == expected


@pytest.mark.parametrize(
    "query",
    [
        "site_id=a",
        "site_id=a&date=2026-01-01&limit=1000",
        "site_id=a&limit=0007",
        "site_id=" + "%C3%A9" * 128,  # exactly 256 bytes
        "site_id=" + "%F0%9F%98%80" * 64,  # 64 emoji, 256 bytes
        "site_id=a+b",  # a space is no control character
    ],
)
def test_good_query_strings_are_answered(client: Client, query: str) -> None:
    assert client.get(f"/stats?{query}").status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_take_no_parameters(client: Client, path: str) -> None:
    assert client.get(path).status_code == 200
    assert errors(client.get(f"{path}?verbose=1")) == [("verbose", "extra_forbidden")]


def test_a_trailing_slash_is_404_not_a_redirect_echoing_the_host(client: Client) -> None:
    response = client.get(
        "/stats/?site_id=a", headers={"host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404 and "location" not in response.headers


class Window(BaseModel):
    first: int = 1
    last: int = 2


def test_routes_added_later_are_checked_without_a_list() -> None:
    """The mechanism reads each route's declarations: aliases (`from`), list parameters
    (repeatable), parameters of dependencies and parameter models all count."""
    app = reporting_app()

    async def scoped(token: str | None = None) -> str | None:
        return token

    @app.get("/stats/future")
    async def future(
        site_id: str,
        from_: Annotated[date, Query(alias="from")],
        minutes: int = 5,
        by: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
        token: str | None = Depends(scoped),
    ) -> dict[str, Any]:
        return {"from": from_.isoformat(), "minutes": minutes, "by": by, "token": token}

    @app.get("/stats/window")
    async def window(params: Annotated[Window, Query()]) -> dict[str, int]:
        return params.model_dump()

    route = next(r for r in app.routes if getattr(r, "path", "") == "/stats/future")
    assert set(declared_query(route)) == {"site_id", "from", "minutes", "by", "token"}

    with client_for(app) as client:
        check_future_routes(client)


def check_future_routes(client: Client) -> None:
    ok = client.get("/stats/future?site_id=a&from=2026-01-02&by=path&by=referrer&token=t")
    assert ok.status_code == 200
    assert ok.json() == {
        "from": "2026-01-02",
        "minutes": 5,
        "by": ["path", "referrer"],
        "token": "t",
    }
    assert errors(client.get("/stats/future?site_id=a&from=2026-01-02&from_=x")) == [
        ("from_", "extra_forbidden")
    ]
    assert errors(client.get("/stats/future?site_id=a&from=2026-01-02&minutes=5_0")) == [
        ("minutes", "int_parsing")
    ]
    assert errors(client.get("/stats/future?site_id=a&from=0")) == [("from", "date_parsing")]
    assert errors(client.get("/stats/future?site_id=a&from=2026-01-02&by=%00")) == [
        ("by", "string_pattern_mismatch")
    ]
    assert client.get("/stats/window?first=3&last=4").json() == {"first": 3, "last": 4}
    assert errors(client.get("/stats/window?first=3&params=1")) == [("params", "extra_forbidden")]
    assert errors(client.get("/stats/window?first=%D9%A3")) == [("first", "int_parsing")]


KEYS = st.one_of(st.sampled_from(["site_id", "date", "limit"]), st.text(max_size=8))
VALUES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["a", "5", "1000", "0", "2026-01-01", "2026-02-30", *CONTROL]),
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    st.dates().map(date.isoformat),
)


QUERIES = query_strings(KEYS, VALUES)


@settings(max_examples=1500, deadline=None)
@given(path=st.sampled_from(["/stats", "/healthz", "/readyz", "/metrics"]), query=QUERIES)
def test_no_query_string_is_a_server_error(client: Client, path: str, query: str) -> None:
    response = client.get(f"{path}?{query}")
    assert response.status_code < 500, (query, response.text)
    if response.status_code == 422:
        for error in response.json()["detail"]:
            assert error["loc"][0] == "query" and {"type", "msg", "input"} <= set(error)
