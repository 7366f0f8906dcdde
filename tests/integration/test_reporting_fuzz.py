"""Fuzzing reporting's HTTP API from its own OpenAPI document: whatever a client asks, no
answer is a server error, and every answer matches the document (a documented status code, a
documented content type, a body of the documented schema), as JSON and as CSV.

Schemathesis generates requests for every operation of the document, positive and negative:
(a) with a bearer token for every site (QUEUEFLOW_STATS_TOKENS is set), so that the routes are
exercised past authentication, against a real PostgreSQL holding a few seeded events and a real
Redis holding the seeded sites' ingest counts; positive requests run once more asking for CSV
(`format=csv`, or `Accept: text/csv`), whose answers are checked against the document's
text/csv and DESIGN.md's CSV rules (a named header row, freshness in X-QueueFlow-* headers);
(b) without an Authorization header, where every /stats* and /sites answer is a 401 (or a 422
for a query refused before the token is read) and must conform too.

The app runs under uvicorn (tests.helpers.serve) in a thread of its own, so that Hypothesis's
synchronous tests can drive it over a real socket.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.formats import unregister_string_format

from queueflow.core.config import Settings
from queueflow.core.events import Event, encode_event
from queueflow.core.ingest_counts import counts_key
from queueflow.core.store import EventStore, create_pool, stored_event
from queueflow.reporting.app import create_app
from tests.helpers import Served

TOKEN = "fuzz-every-site-token"
AUTHORIZATION = {"Authorization": f"Bearer {TOKEN}"}
SITES = ["a.example", "b.example", "\u00e9\u4e2d\U0001f600.example"]
STATS_ROUTES = [
    "/stats",
    "/stats/timeseries",
    "/stats/breakdown",
    "/stats/realtime",
    "/stats/ingest",
    "/sites",
]
PROBE_ROUTES = ["/healthz", "/readyz", "/metrics"]
# What each kind of route may answer here: a token for every site is never refused (401,
# 403) and Redis is up (no 503); without a token a /stats* route is a 401, or a 422 for a
# query refused before the token is read (by strict_query, an app-level dependency, or by a
# range dependency declared before the route's `access`).
ALLOWED = {"stats": {200, 422}, "probe": {200}}
ALLOWED_WITHOUT_TOKEN = {"stats": {401, 422}, "probe": {200}}
CSV_FRESHNESS = ("x-queueflow-as-of", "x-queueflow-lag", "x-queueflow-complete")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
RESPONSE_TIMEOUT_S = 5  # a local answer takes milliseconds: a hung statement fails fast
# No shrinking: a request whose statement hangs keeps a pooled connection busy for up to the
# pool's command timeout (60 s), so the smaller requests tried next would time out waiting for
# one and be blamed instead; the first failing request is the one reported.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]


@pytest.fixture
async def seeded(database_url: str) -> None:
    """A few events of each site: today (two in the last minute, for /stats/realtime),
    yesterday and a month ago, of two types, with and without a referrer."""
    now = datetime.now(UTC)
    rows = [
        (site, kind, path, user, when, referrer)
        for site in SITES
        for kind, path, user, when, referrer in [
            ("page_view", "/", "u1", now - timedelta(seconds=30), None),
            ("page_view", "/", "u2", now - timedelta(seconds=10), "https://ref.example/"),
            ("page_view", "/pricing", "u1", now - timedelta(hours=2), "https://ref.example/"),
            ("click", "/pricing", "u3", now - timedelta(hours=3), None),
            ("page_view", "/docs", "u2", now - timedelta(days=1), None),
            ("page_view", "/\u00e9t\u00e9", "u4", now - timedelta(days=30), "\u4e2d"),
        ]
    ]
    pool = await create_pool(database_url, max_size=1)
    try:
        await EventStore(pool).save_batch(
            [
                stored_event(
                    encode_event(
                        Event(site, kind, path, user, ts, event_id=f"e{i}", referrer=referrer)
                    ),
                    int(time.time() * 1000),
                )
                for i, (site, kind, path, user, ts, referrer) in enumerate(rows)
            ]
        )
    finally:
        await pool.close()


@pytest.fixture
def ingest_counts(settings: Settings) -> Iterator[None]:
    """What ingest would have counted today for the seeded sites (read by /stats/ingest)."""
    client = redis.Redis.from_url(settings.redis_dsn())
    today = datetime.now(UTC).date()
    keys = [counts_key(settings.stream, today, site) for site in SITES]
    for key in keys:
        client.hset(key, mapping={"accepted": 6, "dropped:bot": 1, "rejected:validation": 2})
    yield
    client.delete(*keys)
    client.close()


@pytest.fixture
def reporting(settings: Settings, seeded: None, ingest_counts: None) -> Iterator[Served]:
    locked = settings.model_copy(update={"stats_tokens": TOKEN})
    with Served(create_app(locked)) as served:
        yield served


@pytest.fixture
def recent_dates() -> Iterator[None]:
    """Schemathesis's `date` strings, mostly within a month of today (where the seeded events
    are, and so that a drawn `from` and `to` often make a range reporting answers), sometimes
    the calendar's ends (0001-01-01, 9999-12-31) or anywhere in years 1-9999 (ranges too long,
    or reversed)."""
    today = datetime.now(UTC).date()
    recent = st.integers(-35, 2).map(lambda days: (today + timedelta(days=days)).isoformat())
    ends = st.sampled_from([date.min, date.max, date(1970, 1, 1)]).map(date.isoformat)
    anywhere = st.dates().map(date.isoformat)
    schemathesis.openapi.format("date", st.one_of(recent, recent, recent, ends, anywhere))
    yield
    unregister_string_format("date")


@dataclass
class Tally:
    """What a fuzz run did: (status, media type) counts per route and mode."""

    statuses: dict[str, dict[Any, int]] = field(default_factory=dict)

    def add(self, route: str, status: Any) -> None:
        counts = self.statuses.setdefault(route, {})
        counts[status] = counts.get(status, 0) + 1

    def report(self, name: str) -> str:
        routes = {r: dict(sorted(c.items(), key=str)) for r, c in sorted(self.statuses.items())}
        return f"{name}: statuses per route and mode {routes}"


SCHEMATHESIS_EXAMPLES = 80  # per route and generation mode, with the token
CSV_EXAMPLES = 40  # per /stats* route and /sites, positive, asking for CSV, with the token
UNAUTHENTICATED_EXAMPLES = 25  # per route and generation mode, without a token


def kind(route: str) -> str:
    return "probe" if route in PROBE_ROUTES else "stats"


def check_csv(route: str, response: Any) -> None:
    """DESIGN.md "Reporting routes", CSV: a header row named by the JSON keys, then lines of
    as many cells; a /stats* answer's freshness in X-QueueFlow-* headers."""
    assert response.status_code == 200
    if route != "/sites":  # /sites says nothing of freshness
        assert all(name in response.headers for name in CSV_FRESHNESS), response.headers
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows and rows[0] and all(rows[0]), response.text[:300]
    assert all(len(row) == len(rows[0]) for row in rows), response.text[:300]


def run_schemathesis(
    operation: Any,
    mode: Any,
    base_url: str,
    tally: Tally,
    label: str,
    allowed: set[int],
    examples: int,
    headers: dict[str, str] | None,
    as_csv: bool = False,
) -> None:
    positive = mode == schemathesis.GenerationMode.POSITIVE
    strategy = operation.as_strategy(
        generation_mode=mode, headers=headers, query={"format": "csv"} if as_csv else None
    )

    @given(case=strategy, site=st.sampled_from([None, *SITES]), by_accept=st.booleans())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=PHASES,
    )
    def call(case: Any, site: str | None, by_accept: bool) -> None:
        sent = dict(headers or {})
        if headers is None and case.headers:
            case.headers.pop("Authorization", None)  # no token at all, not a drawn one
        if positive and site is not None and case.query and "site_id" in case.query:
            case.query["site_id"] = site  # a site with data, not only the empty ones drawn
        if as_csv and by_accept:
            case.query.pop("format", None)
            sent["Accept"] = "text/csv"
        response = case.call_and_validate(
            base_url=base_url, headers=sent, checks=CHECKS, timeout=RESPONSE_TIMEOUT_S
        )
        media = response.headers.get("content-type", [""])[0].split(";")[0]
        tally.add(label, (response.status_code, media))
        assert response.status_code in allowed, (response.status_code, response.text[:300])
        if response.status_code == 401:
            assert "www-authenticate" in response.headers, response.headers
        if media == "text/csv":
            check_csv(operation.path, response)
        elif as_csv:
            assert response.status_code != 200, "asked for CSV, answered otherwise"

    call()


def modes_of(operation: Any) -> list[Any]:
    """Negative cases need something to negate: a route without parameters has none."""
    if not operation.query:
        return [schemathesis.GenerationMode.POSITIVE]
    return [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def test_the_document_lists_the_fuzzed_routes(reporting: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{reporting.url}/openapi.json")
    paths = schema.raw_schema["paths"]
    assert sorted(paths) == sorted(STATS_ROUTES + PROBE_ROUTES)
    for route in STATS_ROUTES:
        assert "text/csv" in paths[route]["get"]["responses"]["200"]["content"], route


@pytest.mark.parametrize("route", STATS_ROUTES + PROBE_ROUTES)
def test_schemathesis_finds_no_server_error_with_a_token(
    reporting: Served, recent_dates: None, route: str
) -> None:
    schema = schemathesis.openapi.from_url(f"{reporting.url}/openapi.json")
    operation = schema[route]["GET"]
    tally = Tally()
    allowed = ALLOWED[kind(route)]
    try:
        for mode in modes_of(operation):
            run_schemathesis(
                operation,
                mode,
                reporting.url,
                tally,
                f"{route} {mode.value}",
                allowed,
                SCHEMATHESIS_EXAMPLES,
                AUTHORIZATION,
            )
        if kind(route) == "stats":
            run_schemathesis(
                operation,
                schemathesis.GenerationMode.POSITIVE,
                reporting.url,
                tally,
                f"{route} csv",
                allowed,
                CSV_EXAMPLES,
                AUTHORIZATION,
                as_csv=True,
            )
    finally:
        print(tally.report("schemathesis"))
    # Positive cases get answered, as JSON (or text) and, when asked for, as CSV.
    media = "text/plain" if route == "/metrics" else "application/json"
    assert tally.statuses[f"{route} positive"].get((200, media), 0) > 0
    if kind(route) == "stats":
        assert tally.statuses[f"{route} csv"].get((200, "text/csv"), 0) > 0
        assert sum(tally.statuses[f"{route} negative"].values()) > 0


@pytest.mark.parametrize("route", STATS_ROUTES + PROBE_ROUTES)
def test_schemathesis_without_a_token_gets_documented_401s(
    reporting: Served, recent_dates: None, route: str
) -> None:
    schema = schemathesis.openapi.from_url(f"{reporting.url}/openapi.json")
    operation = schema[route]["GET"]
    tally = Tally()
    allowed = ALLOWED_WITHOUT_TOKEN[kind(route)]
    try:
        for mode in modes_of(operation):
            run_schemathesis(
                operation,
                mode,
                reporting.url,
                tally,
                f"{route} {mode.value}",
                allowed,
                UNAUTHENTICATED_EXAMPLES,
                None,
            )
    finally:
        print(tally.report("schemathesis, no token"))
    if kind(route) == "stats":
        assert tally.statuses[f"{route} positive"].get((401, "application/json"), 0) > 0
