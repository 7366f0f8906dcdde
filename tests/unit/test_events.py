"""Validation of single events and batches, exactly as DESIGN.md states the rules."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from queueflow.core.events import (
    EventWindow,
    InvalidEvents,
    MalformedJSON,
    decode_batch,
    decode_entry,
    decode_event,
    encode_event,
    new_event_ids,
)
from tests.helpers import event

WINDOW = EventWindow(30)
NOW = datetime.now(UTC)


def decode(body: dict | list | str) -> object:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return decode_event(raw, WINDOW)


def errors_of(body: object) -> list[dict]:
    with pytest.raises(InvalidEvents) as caught:
        decode(body)
    return caught.value.errors


def test_a_valid_event_decodes_with_its_timestamp_in_utc() -> None:
    utc = NOW.replace(microsecond=0)
    india = utc.astimezone(timezone(timedelta(hours=5, minutes=30)))
    e = decode(event(timestamp=india.isoformat(), referrer="https://a.example/"))
    assert e.timestamp == utc and e.timestamp.utcoffset() == timedelta(0)
    assert e.referrer == "https://a.example/"
    assert e.event_id is None


def test_an_offsetless_timestamp_is_utc() -> None:
    naive = NOW.replace(tzinfo=None, microsecond=0)
    e = decode(event(timestamp=naive.isoformat()))
    assert e.timestamp == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"site_id": ""}, "site_id"),
        ({"site_id": "s" * 257}, "site_id"),
        ({"site_id": 7}, "site_id"),
        ({"site_id": None}, "site_id"),
        ({"event_type": "e" * 65}, "event_type"),
        ({"event_type": "click\n"}, "event_type"),
        ({"path": "no-slash"}, "path"),
        ({"path": "/" + "p" * 2048}, "path"),
        ({"path": "/a\x00b"}, "path"),
        ({"path": ["/"]}, "path"),
        ({"user_id": "u\x1b[31m"}, "user_id"),
        ({"user_id": "u" * 257}, "user_id"),
        ({"user_id": True}, "user_id"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1700000000}, "timestamp"),
        ({"timestamp": "2026-11-23"}, "timestamp"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"event_id": "<script>"}, "event_id"),
        ({"referrer": "r" * 2049}, "referrer"),
        ({"properties": {"nested": {"a": 1}}}, "properties"),
        ({"properties": {"list": [1]}}, "properties"),
        ({"properties": {f"k{i}": i for i in range(31)}}, "properties"),
        ({"properties": {"k" * 65: 1}}, "properties"),
        ({"properties": {"k": "v" * 513}}, "properties"),
        ({"properties": {"k": "nul\x00"}}, "properties"),
        ({"properties": "flat"}, "properties"),
        ({"extra": 1}, "extra"),
    ],
)
def test_each_rule_names_the_field_it_rejects(fields: dict, loc: str) -> None:
    body = event(**{k: v for k, v in fields.items() if v is not None})
    if fields.get("site_id", "") is None:
        body.pop("site_id")
    (error,) = errors_of(body)
    assert error["loc"][:2] == ["body", loc], error
    assert error["msg"]


def test_regex_failures_are_explained_in_words() -> None:
    (error,) = errors_of(event(path="relative"))
    assert "must start with '/'" in error["msg"]
    assert "regex" not in error["msg"]


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (timedelta(minutes=4), True),
        (timedelta(minutes=6), False),
        (-timedelta(days=29, hours=23), True),
        (-timedelta(days=30, minutes=1), False),
    ],
)
def test_the_time_window_is_30_days_back_and_5_minutes_ahead(offset: timedelta, ok: bool) -> None:
    body = event(timestamp=(datetime.now(UTC) + offset).isoformat())
    if ok:
        decode(body)
    else:
        (error,) = errors_of(body)
        assert error["loc"] == ["body", "timestamp"]


def test_max_age_zero_lifts_the_lower_bound_but_not_the_upper() -> None:
    unbounded = EventWindow(0)
    raw = json.dumps(event(timestamp="2001-01-01T00:00:00Z")).encode()
    assert decode_event(raw, unbounded).timestamp.year == 2001
    future = json.dumps(event(timestamp=(NOW + timedelta(hours=1)).isoformat())).encode()
    with pytest.raises(InvalidEvents):
        decode_event(future, unbounded)


@pytest.mark.parametrize("body", ["{", "", "nul", '{"site_id": "s",}', "\xff"])
def test_unparseable_json_is_malformed(body: str) -> None:
    with pytest.raises(MalformedJSON):
        decode_event(body.encode("utf-8", "surrogateescape"), WINDOW)


def test_a_non_object_body_is_invalid() -> None:
    (error,) = errors_of([event()])
    assert error["loc"] == ["body"]


def test_valid_properties_of_every_allowed_type() -> None:
    props = {"s": "x", "i": 3, "f": 1.5, "b": True, "n": None}
    assert decode(event(properties=props)).properties == props


def test_a_batch_with_bad_items_names_each_by_index() -> None:
    items = [event(), event(path="bad"), event(), {"site_id": 1}, 5]
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(json.dumps(items).encode(), WINDOW, 500)
    assert [e["loc"][:2] for e in caught.value.errors] == [["body", 1], ["body", 3], ["body", 4]]


def test_a_batch_reports_window_errors_by_index_too() -> None:
    old = event(timestamp="2001-01-01T00:00:00Z")
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(json.dumps([event(), old]).encode(), WINDOW, 500)
    assert caught.value.errors[0]["loc"] == ["body", 1, "timestamp"]


@pytest.mark.parametrize(("items", "limit"), [([], 10), ([event()] * 11, 10), ({"a": 1}, 10)])
def test_batch_shape_limits(items: object, limit: int) -> None:
    with pytest.raises(InvalidEvents):
        decode_batch(json.dumps(items).encode(), WINDOW, limit)


def test_uuid7_ids_are_well_formed_unique_and_time_ordered() -> None:
    ids = new_event_ids(500) + [i for _ in range(500) for i in new_event_ids(1)]
    assert len(set(ids)) == 1000
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(pattern.match(i) for i in ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)
    assert {i[19] for i in ids} == set("89ab")  # both random bits after the variant vary


def test_the_stream_payload_round_trips_without_the_time_window() -> None:
    e = decode(event(event_id="abc", properties={"k": 1}))
    payload = encode_event(e)
    back = decode_entry(payload)
    assert back == e
    # An old accepted event still decodes in the worker, whatever the window says now.
    old = decode_event(
        json.dumps(event(timestamp="2001-01-01T00:00:00Z", event_id="o")).encode(), EventWindow(0)
    )
    assert decode_entry(encode_event(old)).timestamp.year == 2001


def test_an_entry_without_event_id_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_entry(json.dumps(event()).encode())


@pytest.mark.parametrize("value", ["del\x7f", "c1\u0085", "tab\tx", "nul\x00", "esc\x1b"])
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw-utf8"])
def test_control_characters_are_found_however_they_are_encoded(value: str, ensure_ascii: bool):
    raw = json.dumps(event(user_id=value), ensure_ascii=ensure_ascii).encode()
    with pytest.raises(InvalidEvents) as caught:
        decode_event(raw, WINDOW)
    assert caught.value.errors[0]["loc"] == ["body", "user_id"]


def test_escapes_that_are_not_control_characters_are_fine() -> None:
    now = datetime.now(UTC).isoformat().encode()
    raw = (
        b'{"site_id": "s", "event_type": "page_view", "user_id": "u", "timestamp": "' + now + b'",'
        b' "path": "/a\\\\b/\\"q\\"", "referrer": "https:\\/\\/x.example\\/"}'
    )
    decoded = decode_event(raw, WINDOW)
    assert decoded.path == '/a\\b/"q"' and decoded.referrer == "https://x.example/"
