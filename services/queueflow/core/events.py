"""The event model: decoding and validating client JSON, and the entry written to the stream.

msgspec's C decoder checks types, character lengths and unknown fields straight from the
bytes. The rules it cannot express run in Python (`_check`), kept cheap on the hot path by
looking at the raw body first and doing per-event work only where the body says it may be
needed:

- Control characters: JSON can only carry them escaped (or, for DEL and C1, as those exact
  bytes), so a body without such a sequence — nearly every body — skips the per-field scan.
- Byte limits (site_id, path, referrer: what PostgreSQL's B-tree keys hold): an ASCII body
  without escapes has one byte per character, which msgspec already counted; other bodies
  measure only strings long enough to matter (`len(s) * 4 > limit`) and not ASCII.
- Duplicate keys (msgspec keeps the last value): without escaped backslashes every `"` in
  the body is structural, so a body holds exactly as many as its decoded events' keys and
  string values need; one C-speed count compares the two, and only a mismatch (a duplicate,
  an explicit null, an unusual escape) pays for an exact pass with `json.loads`.
- Path prefix, event_id alphabet (one regex over all ids at once) and the time window (in
  UTC, overflow-safe) in one tight loop; an event that trips any of them is checked in full
  by `_problems`, which words the errors.

Bad input costs about what good input does: a batch over the count limit is refused from a
structural pass that stops at item max+1 (no per-item objects past it), and a 422 lists at
most MAX_LISTED_ERRORS errors, then says how many more there were.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import chain
from typing import Annotated, Any

import msgspec

from queueflow.core.errors import MAX_LISTED_ERRORS, InvalidEvents, MalformedJSON
from queueflow.core.json_keys import Found, duplicate_keys, structural_quotes

FUTURE_SKEW = timedelta(minutes=5)

# What the store indexes, in UTF-8 bytes: the primary key (site_id, date, path) of the path
# counts must stay under PostgreSQL's B-tree row limit (2,704 bytes); referrer is grouped on.
BYTE_LIMITS = {"site_id": 256, "path": 2048, "referrer": 2048}

# Where a control character (U+0000-U+001F, U+007F-U+009F) can hide in JSON bytes: escaped,
# or as the bytes of DEL (\x7f) or of a C1 character (\xc2\x80-\xc2\x9f).
_ESCAPED_CONTROL = re.compile(rb"\\(?:u00[0189]|u007[fF]|[bfnrt])")
_C1_CONTROL = re.compile(rb"\xc2[\x80-\x9f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The alphabet is a rule per character, so one match over all of a batch's ids, joined with
# nothing between them, is exact (each id is non-empty: msgspec checked that).
_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]+")
_TEXT_FIELDS = ("site_id", "event_type", "path", "user_id", "referrer")
_TOO_DEEP = "JSON is nested too deeply"

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
PropertyValue = Annotated[str, msgspec.Meta(max_length=512)] | int | float | bool | None
Properties = Annotated[
    dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], PropertyValue],
    msgspec.Meta(max_length=30),
]


# gc=False: an event holds strings, a datetime and a flat dict, never a reference cycle, so
# the collector need not track it (decoding a batch allocates one per item).
class Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One analytics event as a client sends it and as it travels through the stream.
    The max_length figures are characters (msgspec's); BYTE_LIMITS bound UTF-8 bytes."""

    site_id: Text
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    user_id: Text
    # Absent: the time ingest accepted the event (a browser's clock is not trusted).
    timestamp: datetime | None = None
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    referrer: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    properties: Properties | None = None


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


class EventWindow:
    """The accepted timestamp range: not older than max_age_days, at most 5 minutes ahead."""

    def __init__(self, max_age_days: int) -> None:
        try:
            self.max_age = timedelta(days=max_age_days) if max_age_days else None
        except OverflowError:  # more days than a datetime spans: no lower bound
            self.max_age = None

    def bounds(self) -> tuple[datetime | None, datetime]:
        """(earliest or None, latest) accepted timestamps, as of now."""
        now = datetime.now(UTC)
        earliest = None
        if self.max_age is not None and now - _EARLIEST > self.max_age:
            earliest = now - self.max_age
        return earliest, now + FUTURE_SKEW

    def problem(self, timestamp: datetime, bounds: tuple[datetime | None, datetime]) -> str | None:
        earliest, latest = bounds
        if timestamp > latest:
            return "timestamp is more than 5 minutes in the future"
        if earliest is not None and timestamp < earliest:
            return f"timestamp is older than {self.max_age.days} days"  # type: ignore[union-attr]
        return None


_ANY_TIME = EventWindow(0)
_NO_BOUNDS: tuple[datetime | None, datetime] = (None, _LATEST)


def _to_utc(ts: datetime) -> datetime | None:
    """Aware UTC (RFC 3339 without an offset means UTC); None when the UTC time is outside
    the years 1-9999 (0001-01-01T00:00:00+14:00 is still year 0 in UTC)."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    try:
        return ts.astimezone(UTC)
    except OverflowError:
        return None


def _over_bytes(value: str, limit: int) -> bool:
    """More than `limit` UTF-8 bytes. Free for short or ASCII strings (the caller's char
    limit already holds them); only long non-ASCII ones are encoded."""
    return len(value) * 4 > limit and not value.isascii() and len(value.encode()) > limit


def _problems(
    event: Event, window: EventWindow, bounds: tuple[datetime | None, datetime], controls: bool
) -> list[tuple[str, str]]:
    """Every rule the decoder did not check, worded, for one event; normalises its timestamp
    to aware UTC. Returns (field, message) pairs."""
    found = []
    ts = event.timestamp
    if ts is None:  # only a stream entry can get here without one: decode_entry says so
        return [("timestamp", "stream entry has no timestamp")]
    if ts.tzinfo is not UTC:
        utc = _to_utc(ts)
        if utc is None:
            found.append(("timestamp", "timestamp is outside the years 0001-9999 in UTC"))
        else:
            event.timestamp = ts = utc
    if event.path[0] != "/":
        found.append(("path", "path must start with '/'"))
    if event.event_id is not None and not _EVENT_ID.fullmatch(event.event_id):
        found.append(("event_id", "event_id may only contain letters, digits and . _ : -"))
    if ts.tzinfo is UTC and (problem := window.problem(ts, bounds)):
        found.append(("timestamp", problem))
    for name, limit in BYTE_LIMITS.items():
        value = getattr(event, name)
        if value is not None and _over_bytes(value, limit):
            size = len(value.encode())
            found.append((name, f"{name} must be at most {limit} bytes in UTF-8, not {size}"))
    if controls:
        for name in _TEXT_FIELDS:
            value = getattr(event, name)
            if value and _CONTROL.search(value):
                found.append((name, f"{name} must not contain control characters"))
        for key, value in (event.properties or {}).items():
            if _CONTROL.search(key):
                found.append(("properties", "property names must not contain control characters"))
            if isinstance(value, str) and "\x00" in value:
                # PostgreSQL's jsonb cannot hold U+0000: refused here, not by the worker.
                found.append(("properties", "property values must not contain NUL"))
    return found


def _may_hold_controls(body: bytes, escaped: bool) -> bool:
    # memchr-speed scans (find, not `in`, which is slower on bytes) settle nearly every body;
    # the regexes run only when needed, each starting with a literal, which one alternation
    # of all three cannot (bench/README.md, "Findings").
    if escaped and _ESCAPED_CONTROL.search(body) is not None:
        return True
    if body.find(b"\x7f") >= 0:
        return True
    return body.find(b"\xc2") >= 0 and _C1_CONTROL.search(body) is not None


# (index of the event, loc below it, message)


def _check(
    events: list[Event],
    body: bytes,
    window: EventWindow,
    bounds: tuple[datetime | None, datetime],
    batch: bool,
) -> Found:
    """Check `events`, decoded from `body`, against every rule msgspec did not apply."""
    escaped = body.find(b"\\") >= 0
    controls = _may_hold_controls(body, escaped)
    earliest, latest = bounds
    if earliest is None:
        earliest = _EARLIEST
    suspects: list[int] = []
    ids: list[str] = []
    props: list[dict[str, Any]] = []
    # Quote characters the body must hold: the four required fields' keys and string values,
    # and the timestamp's key and value where it is given.
    quotes = 20 * len(events)
    for index, event in enumerate(events):
        ts = event.timestamp
        if ts is None:
            event.timestamp = ts = min(datetime.now(UTC), latest)
            quotes -= 4
        elif ts.tzinfo is not UTC:
            utc = _to_utc(ts)
            if utc is None:
                suspects.append(index)
            else:
                event.timestamp = ts = utc
        if event.path[0] != "/" or not earliest <= ts <= latest:
            suspects.append(index)
        if event.event_id is not None:
            ids.append(event.event_id)
        if event.referrer is not None:
            quotes += 4
        if event.properties is not None:
            props.append(event.properties)
    quotes += 4 * len(ids)
    if props:  # the "properties" keys; each property's key, and its value when a string
        quotes += 2 * len(props)
        encoded = _encoder.encode(props)  # C speed: no Python step per property
        if encoded.find(b"\\") < 0:  # no escapes: its quotes are those keys and strings
            quotes += encoded.count(b'"')
        else:
            values = chain.from_iterable(map(dict.values, props))
            quotes += 2 * (sum(map(len, props)) + list(map(type, values)).count(str))
    if ids and not _EVENT_ID.fullmatch("".join(ids)):
        suspects.extend(i for i, e in enumerate(events) if e.event_id is not None)
    if escaped or not body.isascii():  # strings may have more bytes than characters
        for index, event in enumerate(events):
            # The length guards are _over_bytes's first test, inlined for speed.
            site_id, path, referrer = event.site_id, event.path, event.referrer
            if (
                (len(site_id) > 64 and _over_bytes(site_id, 256))
                or (len(path) > 512 and _over_bytes(path, 2048))
                or (referrer is not None and len(referrer) > 512 and _over_bytes(referrer, 2048))
            ):
                suspects.append(index)
    if controls:
        suspects = list(range(len(events)))
    found: Found = []
    if suspects:
        for index in sorted(set(suspects)):
            for field, msg in _problems(events[index], window, bounds, controls):
                found.append((index, [field], msg))
    if structural_quotes(body, escaped) != quotes:
        found.extend(duplicate_keys(body, batch))
        found.sort(key=lambda item: item[0])  # stable: each event's errors stay in order
    return found


_event_decoder = msgspec.json.Decoder(Event)
_batch_decoder = msgspec.json.Decoder(list[Event])
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_encoder = msgspec.json.Encoder()


def _must_be_json(body: bytes) -> None:
    """Raise MalformedJSON unless the body is JSON (a full structural pass, no objects)."""
    try:
        _raw_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedJSON(str(exc)) from None
    except RecursionError:
        raise MalformedJSON(_TOO_DEEP) from None


def decode_event(body: bytes, window: EventWindow) -> Event:
    try:
        event = _event_decoder.decode(body)
    except msgspec.ValidationError as exc:
        _must_be_json(body)  # `{} x` is not JSON (400), even though `{}` alone is a 422
        raise InvalidEvents([_error(str(exc), ["body"])]) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(str(exc)) from None
    except RecursionError:
        raise MalformedJSON(_TOO_DEEP) from None
    if found := _check([event], body, window, window.bounds(), batch=False):
        raise InvalidEvents([_field_error(["body", *loc], msg) for _, loc, msg in found])
    return event


def decode_batch(body: bytes, window: EventWindow, max_events: int) -> list[Event]:
    """Decode a JSON array of events; any invalid item rejects the whole batch."""
    try:
        events = _batch_decoder.decode(body)
    except msgspec.ValidationError:
        # Slow path, only for bad input: find every failing item, not just the first.
        errors, unlisted = _batch_errors(body, window, max_events)
        raise InvalidEvents(errors, unlisted) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(str(exc)) from None
    except RecursionError:
        raise MalformedJSON(_TOO_DEEP) from None
    if not events:
        raise InvalidEvents([_error("Expected a non-empty array of events", ["body"])])
    if len(events) > max_events:
        raise InvalidEvents(
            [_error(f"Expected at most {max_events} events, got {len(events)}", ["body"])]
        )
    if found := _check(events, body, window, window.bounds(), batch=True):
        listed = found[:MAX_LISTED_ERRORS]
        errors = [_field_error(["body", i, *loc], msg) for i, loc, msg in listed]
        raise InvalidEvents(errors, unlisted=len(found) - len(listed))
    return events


# Past this, a struct with one field per allowed item is too big to be worth it.
_MAX_ITEMS_STRUCT = 10_000


@lru_cache(maxsize=8)
def _items_decoder(max_events: int) -> msgspec.json.Decoder:
    """Decodes an array into its items' raw bytes, failing at item max_events + 1: an
    array-like struct with one optional field per allowed item (a list would make an
    object for every item of a 64 KiB array of `{}` before its length could be checked)."""
    if max_events > _MAX_ITEMS_STRUCT:
        return msgspec.json.Decoder(list[msgspec.Raw])
    fields = [(f"item{i}", msgspec.Raw, None) for i in range(max_events)]
    items = msgspec.defstruct("Items", fields, array_like=True, forbid_unknown_fields=True)
    return msgspec.json.Decoder(items)


def _items(body: bytes, max_events: int) -> list[msgspec.Raw]:
    """The batch's items, undecoded; raises for a body that is no array of 1..max items."""
    try:
        decoded = _items_decoder(max_events).decode(body)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `array` of at most length"):
            over = f"Expected at most {max_events} events, got more"
            raise InvalidEvents([_error(over, ["body"])]) from None
        _must_be_json(body)
        raise InvalidEvents([_error(str(exc), ["body"])]) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(str(exc)) from None
    except RecursionError:
        raise MalformedJSON(_TOO_DEEP) from None
    if isinstance(decoded, list):
        items = decoded
    else:
        fields = msgspec.structs.astuple(decoded)
        items = list(fields[: fields.index(None)] if fields[-1] is None else fields)
    if not items:
        raise InvalidEvents([_error("Expected a non-empty array of events", ["body"])])
    if len(items) > max_events:
        over = f"Expected at most {max_events} events, got {len(items)}"
        raise InvalidEvents([_error(over, ["body"])])
    return items


def _batch_errors(
    body: bytes, window: EventWindow, max_events: int
) -> tuple[list[dict[str, Any]], int]:
    """Each bad item's errors (formatted for the first MAX_LISTED_ERRORS, counted after)."""
    bounds = window.bounds()
    errors: list[dict[str, Any]] = []
    unlisted = 0
    for index, raw in enumerate(_items(body, max_events)):
        try:
            event = _event_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(_error(str(exc), ["body", index]))
            else:
                unlisted += 1
            continue
        for _, loc, msg in _check([event], bytes(raw), window, bounds, batch=False):
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(_field_error(["body", index, *loc], msg))
            else:
                unlisted += 1
    return errors, unlisted


_PART = re.compile(r"\.(\w+)|\[(\d+)\]")
_CHARS = re.compile(r"Expected `str` of length <= \d+$")
_KEY_IN = "key` in `"


def _error(message: str, prefix: list[str | int]) -> dict[str, Any]:
    """Turn a msgspec message ("... - at `$.path`", or "- at `key` in `$.path`" for a
    mapping's key) into one FastAPI-shaped error. The location is the last ` - at `."""
    msg, at, where = message.rpartition(" - at `")
    if not at or not where.endswith("`"):
        msg, where = message, ""
    key = where.startswith(_KEY_IN)
    if key:
        where = where[len(_KEY_IN) :]
    loc = list(prefix)
    for name, index in _PART.findall(where[1:-1]):
        loc.append(name if name else int(index))
    if key:
        msg = f"property name: {msg}"
    elif loc[-1] in BYTE_LIMITS and _CHARS.match(msg):  # over the limit in characters already
        msg = f"{loc[-1]} must be at most {BYTE_LIMITS[loc[-1]]} bytes in UTF-8"
    kind = "missing" if msg.startswith("Object missing required field") else "value_error"
    if msg.startswith(("Object missing required field", "Object contains unknown field")):
        name = msg.split("`")[1]
        if len(name) > _ECHOED_NAME:  # a 422 never grows with a client's invented field name
            name = name[:_ECHOED_NAME] + "..."
            msg = f"{msg.split('`')[0]}`{name}`"
        loc.append(name)
    return {"type": kind, "loc": loc, "msg": msg}


_ECHOED_NAME = 64


def _field_error(loc: list[str | int], msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": msg}


def encode_event(event: Event) -> bytes:
    """The stream entry's payload: the validated event, event_id always set, timestamp in UTC."""
    return _encoder.encode(event)


def decode_entry(payload: bytes) -> Event:
    """Decode a stream payload with the same rules, but no time window: the event was accepted
    already. Raises msgspec.ValidationError for an entry no ingest would have written."""
    event = _event_decoder.decode(payload)
    escaped = payload.find(b"\\") >= 0
    found = _problems(event, _ANY_TIME, _NO_BOUNDS, _may_hold_controls(payload, escaped))
    if event.event_id is None:
        found.append(("event_id", "stream entry has no event_id"))
    if found:
        raise msgspec.ValidationError("; ".join(msg for _, msg in found))
    return event
