"""Validation of single events and batches, exactly as the README states the rules."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queueflow.core.errors import InvalidEvents, MalformedJSON
from queueflow.core.event_ids import new_event_ids
from queueflow.core.events import (
    EventWindow,
    decode_batch,
    decode_entry,
    decode_event,
    encode_event,
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


# --- Byte limits: what PostgreSQL's B-tree keys can hold -------------------------------------

CHARS = {"2-byte": "é", "3-byte": "中", "4-byte": "😀"}


def of_bytes(size: int, char: str, head: str = "") -> str:
    """A string of exactly `size` UTF-8 bytes: `head`, as many `char` as fit, ASCII padding."""
    room = size - len(head.encode())
    count = room // len(char.encode())
    return head + char * count + "a" * (room - count * len(char.encode()))


BYTE_FIELDS = [("site_id", 256, ""), ("path", 2048, "/"), ("referrer", 2048, "")]


@pytest.mark.parametrize("char", CHARS.values(), ids=CHARS.keys())
@pytest.mark.parametrize(("field", "limit", "head"), BYTE_FIELDS, ids=lambda v: str(v))
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw-utf8"])
def test_byte_limits_hold_exactly_at_the_limit(field, limit, head, char, ensure_ascii) -> None:
    at = of_bytes(limit, char, head)
    over = of_bytes(limit + 1, char, head)
    assert len(at.encode()) == limit and len(over.encode()) == limit + 1
    assert len(over) <= limit  # within the character limit: only the byte check refuses it
    raw = json.dumps(event(**{field: at}), ensure_ascii=ensure_ascii).encode()
    assert getattr(decode_event(raw, WINDOW), field) == at
    raw = json.dumps(event(**{field: over}), ensure_ascii=ensure_ascii).encode()
    with pytest.raises(InvalidEvents) as caught:
        decode_event(raw, WINDOW)
    (error,) = caught.value.errors
    assert error["loc"] == ["body", field]
    assert f"at most {limit} bytes" in error["msg"] and str(limit + 1) in error["msg"]


@pytest.mark.parametrize("char", CHARS.values(), ids=CHARS.keys())
def test_a_batch_names_the_item_over_a_byte_limit(char: str) -> None:
    items = [event(), event(path=of_bytes(2049, char, "/")), event(site_id=of_bytes(257, char))]
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(json.dumps(items, ensure_ascii=False).encode(), WINDOW, 500)
    assert [e["loc"] for e in caught.value.errors] == [["body", 1, "path"], ["body", 2, "site_id"]]


def test_the_keys_the_hostile_client_sent_are_refused() -> None:
    for fields in (
        {"path": "/" + "中" * 900},  # 2,701 bytes: over the B-tree row limit by itself
        {"site_id": "😀" * 256, "path": "/" + "p" * 2000},  # 1,024 + 2,001 bytes
    ):
        (error,) = errors_of(event(**fields))
        assert "bytes" in error["msg"]


def test_a_string_over_the_character_limit_is_told_in_bytes_too() -> None:
    (error,) = errors_of(event(site_id="s" * 257))
    assert error["loc"] == ["body", "site_id"] and "256 bytes" in error["msg"]


@pytest.mark.parametrize("char", CHARS.values(), ids=CHARS.keys())
def test_the_other_limits_stay_characters(char: str) -> None:
    e = decode(
        event(
            event_type=char * 64,
            user_id=char * 256,
            properties={char * 64: char * 512},
            event_id="x" * 128,
        )
    )
    assert e.user_id == char * 256 and e.properties == {char * 64: char * 512}
    for fields in (
        {"event_type": char * 65},
        {"user_id": char * 257},
        {"properties": {char * 65: 1}},
        {"properties": {"k": char * 513}},
    ):
        (error,) = errors_of(event(**fields))
        assert error["loc"][:2] == ["body", next(iter(fields))]


def test_the_worker_refuses_an_entry_over_a_byte_limit() -> None:
    payload = json.dumps(event(event_id="e", path="/" + "中" * 900)).encode()
    with pytest.raises(msgspec.ValidationError, match="bytes"):
        decode_entry(payload)


# --- Every body is a 400 or a 422, never an exception ----------------------------------------

HOSTILE = [
    b'[{"site_id": "s"}] trailing',
    b'{"site_id": "s"} trailing',
    b"[{}] x",
    b"{} x",
    b'[{"site_id": "s"',
    b"[" + json.dumps(event()).encode(),
    b"[" * 5000 + b"]" * 5000,
    b'{"properties": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b"[" + b"[" * 5000 + b"]" * 5000 + b"]",
    b'[{"site_id": 1e999}]',
    b'{"site_id": 1e999}',
    b"[1e400]",
    b"1e400",
    b"[" + b"9" * 5000 + b"]",
    json.dumps(event()).encode().replace(b"}", b', "properties": {"n": ' + b"9" * 5000 + b"}}"),
    b"[" + json.dumps(event()).encode().replace(b"}", b', "properties": {"n": -1e400}}]'),
    json.dumps(event()).encode().replace(b"}", b', "properties": {"n": 1e999}}'),
    b"null",
    b"[null]",
    b'"string"',
    b"\xff\xfe",
    b"",
]


@pytest.mark.parametrize("body", HOSTILE, ids=lambda b: repr(b[:24]))
def test_hostile_bodies_are_malformed_or_invalid(body: bytes) -> None:
    for decode_any in (lambda: decode_event(body, WINDOW), lambda: decode_batch(body, WINDOW, 500)):
        with pytest.raises((MalformedJSON, InvalidEvents)):
            decode_any()


def test_big_numbers_within_range_are_kept() -> None:
    props = {"big": 10**30, "u64": 2**64, "tiny": 1e-300, "neg": -(2**63) - 1}
    assert decode(event(properties=props)).properties == props


@pytest.mark.parametrize("body", [b"[{}] x", b"{} x", b'[{"a": 1}', b"[" * 5000 + b"]" * 5000])
def test_a_body_that_is_not_json_is_malformed_even_when_its_start_is_invalid(body: bytes):
    with pytest.raises(MalformedJSON):
        decode_batch(body, WINDOW, 500)


# --- Bad batches cost about what good ones do ------------------------------------------------


def test_an_over_count_batch_is_refused_before_its_items_are_validated() -> None:
    body = b"[" + b",".join([b"{}"] * 21_845) + b"]"  # 64 KiB of empty objects
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(body, WINDOW, 500)
    (error,) = caught.value.errors
    assert error["loc"] == ["body"] and "at most 500 events" in error["msg"]
    valid = json.dumps([event()] * 501).encode()
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(valid, WINDOW, 500)
    assert "got 501" in caught.value.errors[0]["msg"]


def test_a_batch_lists_at_most_50_errors_and_counts_the_rest() -> None:
    items = [{}] * 200 + [event(path="no-slash")] * 100 + [event()]
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(json.dumps(items).encode(), WINDOW, 500)
    errors = caught.value.errors
    assert len(errors) == 51
    assert [e["loc"][:2] for e in errors[:50]] == [["body", i] for i in range(50)]
    assert errors[-1]["type"] == "too_many_errors" and errors[-1]["loc"] == ["body"]
    assert errors[-1]["msg"].startswith("250 more errors not listed")
    # Valid items with rule errors only (the fast path's), capped the same way.
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(json.dumps([event(path="x")] * 120).encode(), WINDOW, 500)
    assert len(caught.value.errors) == 51
    assert caught.value.errors[-1]["msg"].startswith("70 more")


# --- Timestamps at the limits of datetime ----------------------------------------------------

EXTREMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59-00:01"]


@pytest.mark.parametrize("timestamp", EXTREMES)
@pytest.mark.parametrize("days", [30, 0])
def test_timestamps_that_overflow_in_utc_are_invalid(timestamp: str, days: int) -> None:
    window = EventWindow(days)
    for raw, decode_any in (
        (json.dumps(event(timestamp=timestamp)).encode(), decode_event),
        (json.dumps([event(), event(timestamp=timestamp)]).encode(), decode_batch),
    ):
        with pytest.raises(InvalidEvents) as caught:
            decode_any(raw, window) if decode_any is decode_event else decode_any(raw, window, 9)
        assert caught.value.errors[0]["loc"][-1] == "timestamp"
    with pytest.raises(msgspec.ValidationError):
        decode_entry(json.dumps(event(timestamp=timestamp, event_id="e")).encode())


def test_the_datetime_limits_themselves_are_fine_without_a_lower_bound() -> None:
    for timestamp in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00"):
        raw = json.dumps(event(timestamp=timestamp, event_id="e")).encode()
        e = decode_event(raw, EventWindow(0))
        assert e.timestamp == datetime.min.replace(tzinfo=UTC)
        assert decode_entry(encode_event(e)) == e


def test_a_window_longer_than_datetime_spans_has_no_lower_bound() -> None:
    for days in (800_000, 10**12):
        raw = json.dumps(event(timestamp="0001-01-02T00:00:00Z")).encode()
        assert decode_event(raw, EventWindow(days)).timestamp.year == 1


# --- Duplicate keys --------------------------------------------------------------------------


def with_duplicate(key: str, value: object, body: dict | None = None) -> bytes:
    """An event body with `key` given a second time, after the rest."""
    raw = json.dumps(body or event())[:-1]
    return f"{raw}, {json.dumps(key)}: {json.dumps(value)}}}".encode()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("site_id", "other"),
        ("event_type", "click"),
        ("path", "/other"),
        ("user_id", "u2"),
        ("timestamp", datetime.now(UTC).isoformat()),
        ("event_id", "again"),
        ("referrer", "https://b.example/"),
        ("properties", {"a": 1}),
        ("user_id", 5),
        ("referrer", None),
    ],
)
def test_a_repeated_field_is_refused_by_name(key: str, value: object) -> None:
    body = event(event_id="first", referrer="https://a.example/", properties={"a": 0})
    with pytest.raises(InvalidEvents) as caught:
        decode_event(with_duplicate(key, value, body), WINDOW)
    messages = {(tuple(e["loc"]), e["msg"]) for e in caught.value.errors}
    if not isinstance(value, int) or isinstance(value, bool):  # `5` fails its type first
        assert (("body", key), f"duplicate key `{key}`") in messages


def test_a_repeated_property_name_is_refused_by_name() -> None:
    raw = json.dumps(event())[:-1] + ', "properties": {"plan": "pro", "n": 1, "plan": "free"}}'
    with pytest.raises(InvalidEvents) as caught:
        decode_event(raw.encode(), WINDOW)
    (error,) = caught.value.errors
    assert error["loc"] == ["body", "properties", "plan"] and "duplicate" in error["msg"]


def test_a_repeated_key_in_a_batch_names_its_item() -> None:
    raw = b"[" + json.dumps(event()).encode() + b"," + with_duplicate("path", "/x") + b"]"
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(raw, WINDOW, 500)
    assert caught.value.errors == [
        {"type": "value_error", "loc": ["body", 1, "path"], "msg": "duplicate key `path`"}
    ]
    # ... and in the slow path too, beside another item's type error.
    raw = raw[:-1] + b', {"site_id": 5}]'
    with pytest.raises(InvalidEvents) as caught:
        decode_batch(raw, WINDOW, 500)
    assert [e["loc"][:3] for e in caught.value.errors] == [
        ["body", 1, "path"],
        ["body", 2, "site_id"],
    ]


def test_a_repeat_spelled_with_escapes_is_found() -> None:
    # `site\u005fid` is `site_id`, and its value's 2 quotes and its key's 2 are balanced by
    # four strings ending in a backslash: `\\"` would look like 4 escaped quotes to a naive count.
    raw = (
        '{"site_id": "a", "site\\u005fid": "b\\\\", "event_type": "x\\\\", "path": "/\\\\",'
        ' "user_id": "u\\\\", "timestamp": "' + datetime.now(UTC).isoformat() + '"}'
    )
    assert json.loads(raw)["site_id"] == "b\\"
    with pytest.raises(InvalidEvents) as caught:
        decode_event(raw.encode(), WINDOW)
    assert caught.value.errors == [
        {"type": "value_error", "loc": ["body", "site_id"], "msg": "duplicate key `site_id`"}
    ]


@pytest.mark.parametrize(
    "body",
    [
        event(referrer=None) | {"referrer": None, "event_id": None, "properties": None},
        event(user_id="site_id", path='/"path"', event_type='a\\"b'),
        event(properties={"site_id": "path", "q": '"', "b": "\\", "n": None, "e": ""}),
        event(site_id='é\\"中', path='/\u00e9\\\\"', properties={}),
    ],
    ids=["explicit-nulls", "field-names-as-values", "quotes-in-properties", "escapes"],
)
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw-utf8"])
def test_bodies_without_repeats_are_not_mistaken_for_them(body: dict, ensure_ascii: bool):
    raw = json.dumps(body, ensure_ascii=ensure_ascii).encode()
    decode_event(raw, WINDOW)
    decode_batch(b"[" + raw + b"," + raw + b"]", WINDOW, 500)


# The cheap duplicate-key check (a count of quotes) against the exact one, on bodies written
# with every spelling JSON allows: escaped keys, escaped quotes and backslashes, whitespace.
_SAFE_TEXT = st.text(
    st.sampled_from('\\"')
    | st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\x7f"),
    max_size=8,
)
_VALUES = st.one_of(
    _SAFE_TEXT,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@st.composite
def json_text(draw: st.DrawFn, value: object) -> str:
    if isinstance(value, str):  # each character as itself or escaped, in any spelling
        ensure_ascii, escape = draw(st.booleans()), draw(st.booleans())
        return (
            '"'
            + "".join(
                f"\\u{ord(c):04x}"
                if escape and ord(c) < 0x10000 and draw(st.booleans())
                else json.dumps(c, ensure_ascii=ensure_ascii)[1:-1]
                for c in value
            )
            + '"'
        )
    if isinstance(value, list):  # pairs: an object, keys possibly repeated
        space = draw(st.sampled_from(["", " ", "\n  "]))
        parts = [f"{draw(json_text(k))}{space}:{space}{draw(json_text(v))}" for k, v in value]
        return "{" + f",{space}".join(parts) + "}"
    return json.dumps(value)


@st.composite
def event_pairs(draw: st.DrawFn) -> tuple[list, bool]:
    """(the event's pairs, whether some key repeats) — repeats only of valid values."""
    now = datetime.now(UTC).isoformat()
    pairs: list = [
        ("site_id", draw(_SAFE_TEXT.map(lambda s: "s" + s))),
        ("event_type", draw(_SAFE_TEXT.map(lambda s: "t" + s))),
        ("path", draw(_SAFE_TEXT.map(lambda s: "/" + s))),
        ("user_id", draw(_SAFE_TEXT.map(lambda s: "u" + s))),
        ("timestamp", now),
    ]
    if draw(st.booleans()):
        pairs.append(("referrer", draw(st.one_of(_SAFE_TEXT, st.none()))))
    if draw(st.booleans()):
        pairs.append(
            (
                "event_id",
                draw(st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,8}", fullmatch=True), st.none())),
            )
        )
    props = draw(st.lists(st.tuples(st.sampled_from("abc"), _VALUES), max_size=5))
    if props or draw(st.booleans()):
        pairs.append(("properties", props))
    if draw(st.booleans()):
        key, value = draw(st.sampled_from(pairs))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, value))
    repeated = len({k for k, _ in pairs}) < len(pairs) or any(
        len({k for k, _ in v}) < len(v) for k, v in pairs if k == "properties"
    )
    return pairs, repeated


@given(st.lists(event_pairs(), min_size=1, max_size=4), st.data())
@settings(max_examples=250, deadline=None)
def test_repeated_keys_are_found_however_the_body_is_written(items: list, data: st.DataObject):
    texts = [data.draw(json_text(pairs)) for pairs, _ in items]
    for text, (_, repeated) in zip(texts, items, strict=True):
        raw = text.encode()
        if repeated:
            with pytest.raises(InvalidEvents) as caught:
                decode_event(raw, WINDOW)
            assert any(e["msg"].startswith("duplicate") for e in caught.value.errors)
        else:
            decode_event(raw, WINDOW)
    batch = ("[" + ", ".join(texts) + "]").encode()
    bad = [i for i, (_, repeated) in enumerate(items) if repeated]
    if bad:
        with pytest.raises(InvalidEvents) as caught:
            decode_batch(batch, WINDOW, 500)
        assert sorted({e["loc"][1] for e in caught.value.errors}) == bad
    else:
        assert len(decode_batch(batch, WINDOW, 500)) == len(items)
