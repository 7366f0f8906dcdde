"""The event model: decoding and validating client JSON, and the entry written to the stream.

Validation runs in msgspec's C decoder (types, lengths, patterns, unknown fields) plus one
post-init check for the time window, so the ingest hot path never builds a pydantic model.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*\Z"
FUTURE_SKEW = timedelta(minutes=5)
DAY = timedelta(days=1)

SiteId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_CONTROL)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_CONTROL)]
Path = Annotated[
    str, msgspec.Meta(min_length=1, max_length=2048, pattern=r"^/[^\x00-\x1f\x7f-\x9f]*\Z")
]
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_CONTROL)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+\Z")]
Referrer = Annotated[str, msgspec.Meta(max_length=2048, pattern=NO_CONTROL)]
PropertyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_CONTROL)]
# PostgreSQL's jsonb cannot hold U+0000, so it is refused here rather than by the worker.
PropertyValue = (
    Annotated[str, msgspec.Meta(max_length=512, pattern=r"^[^\x00]*\Z")] | int | float | bool | None
)
Properties = Annotated[dict[PropertyKey, PropertyValue], msgspec.Meta(max_length=30)]


class Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One analytics event as a client sends it and as it travels through the stream."""

    site_id: SiteId
    event_type: EventType
    path: Path
    user_id: UserId
    timestamp: datetime
    event_id: EventId | None = None
    referrer: Referrer | None = None
    properties: Properties | None = None

    def __post_init__(self) -> None:
        # RFC 3339 without an offset means UTC; store every timestamp as aware UTC.
        ts = self.timestamp
        self.timestamp = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class EventWindow:
    """The accepted timestamp range: not older than max_age_days, at most 5 minutes ahead."""

    def __init__(self, max_age_days: int) -> None:
        self.max_age = timedelta(days=max_age_days) if max_age_days else None

    def problem(self, event: Event, now: datetime) -> str | None:
        if event.timestamp > now + FUTURE_SKEW:
            return "timestamp is more than 5 minutes in the future"
        if self.max_age is not None and event.timestamp < now - self.max_age:
            return f"timestamp is older than {self.max_age.days} days"
        return None


_event_decoder = msgspec.json.Decoder(Event)
_batch_decoder = msgspec.json.Decoder(list[Event])
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class InvalidEvents(Exception):
    """Validation failed; `errors` is FastAPI's 422 `detail` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


class MalformedJSON(Exception):
    """The body is not JSON at all (400)."""


def decode_event(body: bytes, window: EventWindow) -> Event:
    try:
        event = _event_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidEvents([_error(str(exc), ["body"])]) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(str(exc)) from None
    problem = window.problem(event, datetime.now(UTC))
    if problem:
        raise InvalidEvents([_window_error(problem, ["body"], event)])
    return event


def decode_batch(body: bytes, window: EventWindow, max_events: int) -> list[Event]:
    """Decode a JSON array of events; any invalid item rejects the whole batch."""
    try:
        events = _batch_decoder.decode(body)
    except msgspec.ValidationError:
        # Slow path, only for bad input: find every failing item, not just the first.
        raise InvalidEvents(_batch_errors(_any_decoder.decode(body), window)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(str(exc)) from None
    if not events:
        raise InvalidEvents([_error("Expected a non-empty array of events", ["body"])])
    if len(events) > max_events:
        raise InvalidEvents(
            [_error(f"Expected at most {max_events} events, got {len(events)}", ["body"])]
        )
    now = datetime.now(UTC)
    errors = []
    for index, event in enumerate(events):
        problem = window.problem(event, now)
        if problem:
            errors.append(_window_error(problem, ["body", index], event))
    if errors:
        raise InvalidEvents(errors)
    return events


def _batch_errors(items: Any, window: EventWindow) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return [_error(f"Expected `array`, got `{type(items).__name__}`", ["body"])]
    now = datetime.now(UTC)
    errors = []
    for index, item in enumerate(items):
        try:
            event = msgspec.convert(item, Event, strict=True)
        except msgspec.ValidationError as exc:
            errors.append(_error(str(exc), ["body", index]))
            continue
        problem = window.problem(event, now)
        if problem:
            errors.append(_window_error(problem, ["body", index], event))
    return errors


_AT = re.compile(r"^(?P<msg>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_PART = re.compile(r"\.(\w+)|\[(\d+)\]")
# msgspec names the regex that failed; people want the rule in words.
_PATTERN_RULES = {
    "path": "must start with '/' and contain no control characters",
    "event_id": "may only contain letters, digits and . _ : -",
    "properties": "must not contain control characters (names) or NUL (values)",
}


def _error(message: str, prefix: list[str | int]) -> dict[str, Any]:
    """Turn a msgspec message ("... - at `$.path`") into one FastAPI-shaped error."""
    match = _AT.match(message)
    assert match is not None
    loc = list(prefix)
    for name, index in _PART.findall(match["path"] or ""):
        loc.append(name if name else int(index))
    msg = match["msg"]
    if "matching regex" in msg:
        field = loc[-1] if isinstance(loc[-1], str) else ""
        msg = f"{field or 'value'} " + _PATTERN_RULES.get(
            field, "must not contain control characters"
        )
    if match["key"]:
        msg = f"property name: {msg}"
    kind = "missing" if msg.startswith("Object missing required field") else "value_error"
    if msg.startswith(("Object missing required field", "Object contains unknown field")):
        loc.append(msg.split("`")[1])
    return {"type": kind, "loc": loc, "msg": msg}


def _window_error(problem: str, prefix: list[str | int], event: Event) -> dict[str, Any]:
    return {
        "type": "value_error",
        "loc": [*prefix, "timestamp"],
        "msg": problem,
        "input": event.timestamp.isoformat(),
    }


def new_event_id() -> str:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode_event(event: Event) -> bytes:
    """The stream entry's payload: the validated event, event_id always set, timestamp in UTC."""
    return _encoder.encode(event)


_entry_decoder = msgspec.json.Decoder(Event)


def decode_entry(payload: bytes) -> Event:
    """Decode a stream payload. No time window here: the event was accepted already."""
    event = _entry_decoder.decode(payload)
    if event.event_id is None:
        raise msgspec.ValidationError("stream entry has no event_id")
    return event
