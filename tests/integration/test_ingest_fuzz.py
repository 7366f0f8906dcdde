"""Fuzzing POST /event and /events: whatever a client sends, the answer is 202, 400, 413, 415
or 422 — never a 500 — and a 4xx enqueues nothing.

(a) Hypothesis draws bodies of three kinds: arbitrary bytes, arbitrary JSON values, and valid
events mutated (fields dropped, added or retyped; strings at and just past every limit, in
characters and in UTF-8 bytes, with 2-, 3- and 4-byte characters; repeated keys; huge numbers;
deep nesting; truncation; trailing garbage), sent with assorted Content-Types and gzip.
(b) Schemathesis generates requests from ingest's own OpenAPI document, positive and negative,
and checks that none is a server error and that every answer matches the document.

The app runs under uvicorn (tests.helpers.serve) in a thread of its own, so that Hypothesis's
synchronous tests can drive it over a real socket; the test's Redis stream is checked after
every example.
"""

from __future__ import annotations

import gzip
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.specs.openapi.formats import unregister_string_format

from queueflow.core.config import Settings
from queueflow.ingest.app import create_app
from tests.helpers import Served

ALLOWED = {202, 400, 413, 415, 422}
MAX_BATCH = 5  # small, so that over-count batches are cheap to draw


@pytest.fixture
def ingest(settings: Settings) -> Iterator[Served]:
    small = settings.model_copy(update={"max_batch_events": MAX_BATCH})
    with Served(create_app(small)) as served:
        yield served


@pytest.fixture
def stream_length(settings: Settings) -> Iterator[Any]:
    client = redis.Redis.from_url(settings.redis_dsn())
    yield lambda: client.xlen(settings.stream)
    client.close()


@dataclass
class Tally:
    """What a fuzz run did: examples and statuses per route."""

    statuses: dict[str, dict[Any, int]] = field(default_factory=dict)

    def add(self, route: str, status: Any) -> None:
        counts = self.statuses.setdefault(route, {})
        counts[status] = counts.get(status, 0) + 1

    def report(self, name: str) -> str:
        routes = {r: dict(sorted(c.items(), key=str)) for r, c in sorted(self.statuses.items())}
        total = {r: sum(c.values()) for r, c in routes.items() if "media" not in r}
        return f"{name}: examples per route {total}; statuses {routes}"


# --- (a) Hypothesis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """A JSON object as pairs, so that a key can be given twice."""

    pairs: tuple[tuple[str, Any], ...]


def to_json(value: Any, ensure_ascii: bool) -> str:
    if isinstance(value, Obj):
        items = (
            f"{json.dumps(k, ensure_ascii=ensure_ascii)}: {to_json(v, ensure_ascii)}"
            for k, v in value.pairs
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v, ensure_ascii) for v in value) + "]"
    if isinstance(value, Raw):
        return value.text
    return json.dumps(value, ensure_ascii=ensure_ascii)


@dataclass(frozen=True)
class Raw:
    """JSON text put in as it is (a huge number, a deep nesting)."""

    text: str


WIDE = ["é", "中", "😀", "\u0800", "\U0010ffff"]  # 2, 3, 4, 3 and 4 bytes
LIMITS = {  # field: (characters, bytes or None)
    "site_id": (256, 256),
    "event_type": (64, None),
    "path": (2048, 2048),
    "user_id": (256, None),
    "event_id": (128, None),
    "referrer": (2048, 2048),
}


@st.composite
def text_near_limit(draw: st.DrawFn, name: str) -> str:
    """A string at or one past the field's limit, in characters or in bytes."""
    chars, size = LIMITS[name]
    head = "/" if name == "path" else ""
    if name == "event_id":
        return draw(st.sampled_from(["x" * chars, "x" * (chars + 1), "x" * (chars - 1) + "é"]))
    wide = draw(st.sampled_from(WIDE))
    if size is None or draw(st.booleans()):  # in characters
        count = chars - len(head) + draw(st.integers(-1, 1))
        return head + wide * count
    target = size + draw(st.integers(-1, 1))
    room = target - len(head)
    count = room // len(wide.encode())
    return head + wide * count + "a" * (room - count * len(wide.encode()))


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def valid_event(draw: st.DrawFn) -> dict[str, Any]:
    text = st.text(
        st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\x7f"),
        min_size=1,
        max_size=12,
    )
    now = datetime.now(UTC)
    offset = timezone(timedelta(minutes=draw(st.integers(-23 * 60, 23 * 60))))
    moment = now - timedelta(seconds=draw(st.integers(0, 29 * 86400)))
    stamp = moment.astimezone(offset).isoformat() if draw(st.booleans()) else moment.isoformat()
    body: dict[str, Any] = {
        "site_id": draw(text),
        "event_type": draw(st.sampled_from(["page_view", "click"]) | text),
        "path": "/" + draw(text),
        "user_id": draw(text),
        "timestamp": stamp,
    }
    if draw(st.booleans()):
        body["event_id"] = draw(st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True))
    if draw(st.booleans()):
        body["referrer"] = draw(text)
    if draw(st.booleans()):
        body["properties"] = draw(
            st.dictionaries(
                st.text(string.ascii_letters, min_size=1, max_size=8),
                st.none()
                | st.booleans()
                | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False)
                | text,
                max_size=5,
            )
        )
    return body


CONTROLS = ["\x00", "\x1b", "\x7f", "\x85", "\n"]
EXTREME_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01",
]


@st.composite
def mutated_event(draw: st.DrawFn) -> tuple[Any, bool]:
    """(an event as Obj, True when it was left valid)."""
    body = valid_event(draw)
    mutations = draw(
        st.lists(
            st.sampled_from(
                [
                    "drop",
                    "add",
                    "retype",
                    "limit",
                    "time",
                    "huge",
                    "deep",
                    "repeat",
                    "prop-repeat",
                    "controls",
                ]
            ),
            max_size=2,
        )
    )
    pairs = list(body.items())
    for mutation in mutations:
        names = [k for k, _ in pairs]
        if mutation == "drop" and pairs:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif mutation == "add":
            pairs.append((draw(st.text(max_size=10)), draw(json_values())))
        elif mutation == "retype" and pairs:
            i = draw(st.integers(0, len(pairs) - 1))
            pairs[i] = (pairs[i][0], draw(json_values()))
        elif mutation == "limit":
            name = draw(st.sampled_from(sorted(LIMITS)))
            pairs = [(k, v) for k, v in pairs if k != name] + [(name, draw(text_near_limit(name)))]
        elif mutation == "time":
            pairs = [(k, v) for k, v in pairs if k != "timestamp"]
            pairs.append(("timestamp", draw(st.sampled_from(EXTREME_TIMES))))
        elif mutation == "huge" and pairs:
            number = draw(
                st.sampled_from(
                    [
                        "1e999",
                        "-1e400",
                        "9" * 5000,
                        "1e-99999",
                        "123456789012345678901234567890",
                        "-0",
                    ]
                )
            )
            i = draw(st.integers(0, len(pairs) - 1))
            pairs[i] = (pairs[i][0], Raw(number))
        elif mutation == "deep" and pairs:
            depth = draw(st.sampled_from([10, 1000, 20_000]))
            i = draw(st.integers(0, len(pairs) - 1))
            pairs[i] = (pairs[i][0], Raw("[" * depth + "]" * depth))
        elif mutation == "repeat" and pairs:
            name = draw(st.sampled_from(names))
            pairs.insert(draw(st.integers(0, len(pairs))), (name, dict(pairs)[name]))
        elif mutation == "prop-repeat":
            props = [("k", 1), ("k", "again")]
            pairs = [(k, v) for k, v in pairs if k != "properties"] + [
                ("properties", Obj(tuple(props)))
            ]
        elif mutation == "controls" and pairs:
            i = draw(st.integers(0, len(pairs) - 1))
            pairs[i] = (pairs[i][0], "/x" + draw(st.sampled_from(CONTROLS)))
    converted = tuple((k, Obj(tuple(v.items())) if isinstance(v, dict) else v) for k, v in pairs)
    return Obj(converted), not mutations


@st.composite
def request_body(draw: st.DrawFn, batch: bool) -> tuple[bytes, bool]:
    """(body bytes, True when the body is valid and must be accepted)."""
    kind = draw(st.sampled_from(["bytes", "json", "event", "event", "event"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), False
    if kind == "json":
        return json.dumps(draw(json_values())).encode(), False
    ensure_ascii = draw(st.booleans())
    if batch:
        items = draw(st.lists(mutated_event(), min_size=0, max_size=MAX_BATCH + 2))
        text = to_json([e for e, _ in items], ensure_ascii)
        valid = 1 <= len(items) <= MAX_BATCH and all(ok for _, ok in items)
    else:
        event, valid = draw(mutated_event())
        text = to_json(event, ensure_ascii)
    raw = text.encode("utf-8", "surrogatepass")
    tail = draw(st.sampled_from(["none", "none", "truncate", "garbage"]))
    if tail == "truncate" and raw:
        raw, valid = raw[: draw(st.integers(0, len(raw) - 1))], False
    elif tail == "garbage":
        raw, valid = raw + draw(st.binary(min_size=1, max_size=8)), False
    return raw, valid


GOOD_HEADERS = [
    ({"content-type": "application/json"}, True),
    ({"content-type": "text/plain;charset=UTF-8"}, True),
    ({"content-type": "application/json", "content-encoding": "gzip"}, True),
]
BAD_HEADERS = [
    ({}, False),
    ({"content-type": "application/x-www-form-urlencoded"}, False),
    ({"content-type": "application/json; charset=utf-16"}, False),
    ({"content-type": "application/json", "content-encoding": "br"}, False),
]
# Mostly acceptable headers, so that most examples reach the decoder.
HEADERS = st.sampled_from(GOOD_HEADERS * 3 + BAD_HEADERS)

HYPOTHESIS_EXAMPLES = 600  # per route: ~10 s for both


@pytest.mark.parametrize("route", ["/event", "/events"])
def test_no_body_gets_a_server_error_or_enqueues_when_refused(
    ingest: Served, stream_length: Any, route: str
) -> None:
    tally = Tally()
    http = httpx.Client(base_url=ingest.url, timeout=10)

    @given(body=request_body(route == "/events"), headers=HEADERS)
    @settings(
        max_examples=HYPOTHESIS_EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    def post(body: tuple[bytes, bool], headers: tuple[dict[str, str], bool]) -> None:
        raw, valid = body
        header, header_ok = headers
        if header.get("content-encoding") == "gzip":
            raw = gzip.compress(raw)
        before = stream_length()
        response = http.post(route, content=raw, headers=header)
        tally.add(route, response.status_code)
        assert response.status_code in ALLOWED, (raw[:300], response.text[:300])
        assert response.headers["content-length"] == str(len(response.content))
        if response.status_code != 202:
            assert stream_length() == before
            assert response.json()["detail"]
        if valid and header_ok:
            assert response.status_code == 202, (raw[:300], response.text)
        if response.status_code == 202:
            ids = (
                response.json()["event_ids"]
                if route == "/events"
                else [response.json()["event_id"]]
            )
            assert stream_length() == before + len(ids)

    try:
        post()
    finally:
        http.close()
        print(tally.report("hypothesis"))
    assert sum(tally.statuses[route].values()) >= HYPOTHESIS_EXAMPLES // 2
    assert tally.statuses[route].get(202, 0) > 0 and tally.statuses[route].get(422, 0) > 0


# --- (b) Schemathesis --------------------------------------------------------------------------

SCHEMATHESIS_EXAMPLES = 150  # per route and generation mode


def run_schemathesis(
    operation: Any, mode: Any, base_url: str, stream_length: Any, tally: Tally, label: str
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=SCHEMATHESIS_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        before = stream_length()
        response = case.call_and_validate(
            base_url=base_url, checks=[not_a_server_error, response_schema_conformance]
        )
        tally.add(label, response.status_code)
        tally.add(f"{label} media types", case.media_type)
        assert response.status_code in ALLOWED
        if response.status_code != 202:
            assert stream_length() == before

    call()


@pytest.fixture
def recent_date_times() -> Iterator[None]:
    """Schemathesis's `date-time` strings, mostly within ingest's window (a rule the document
    states in words, not in JSON Schema), sometimes anywhere in years 1-9999."""
    offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
    recent = st.builds(
        lambda back, tz: (datetime.now(UTC) - timedelta(seconds=back)).astimezone(tz).isoformat(),
        st.integers(0, 29 * 86400),
        offsets,
    )
    anywhere = st.builds(lambda dt, tz: dt.replace(tzinfo=tz).isoformat(), st.datetimes(), offsets)
    schemathesis.openapi.format("date-time", st.one_of(recent, recent, recent, anywhere))
    yield
    unregister_string_format("date-time")


@pytest.mark.parametrize("route", ["/event", "/events"])
def test_schemathesis_finds_no_server_error(
    ingest: Served, stream_length: Any, recent_date_times: None, route: str
) -> None:
    schema = schemathesis.openapi.from_url(f"{ingest.url}/openapi.json")
    operation = schema[route]["POST"]
    tally = Tally()
    try:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            run_schemathesis(
                operation, mode, ingest.url, stream_length, tally, f"{route} {mode.value}"
            )
    finally:
        print(tally.report("schemathesis"))
    for mode in ("positive", "negative"):
        assert sum(tally.statuses[f"{route} {mode}"].values()) > 0
    # The document describes valid events closely enough that positive cases get accepted.
    assert tally.statuses[f"{route} positive"].get(202, 0) > 0
