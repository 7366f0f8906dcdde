"""OpenAPI documentation for the event routes, generated from the msgspec model they decode
and completed with what that model cannot say: the rules `core/events.py` checks in Python
(byte limits, the path prefix, the event_id alphabet, the time window, no control characters,
no duplicate keys) and every answer's body."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from queueflow.core.config import Settings
from queueflow.core.events import BYTE_LIMITS, MAX_LISTED_ERRORS, Event

# No control character: U+0000-U+001F, U+007F-U+009F (ECMA-262 and Python read it alike).
NO_CONTROLS = "[^\\u0000-\\u001f\\u007f-\\u009f]"
EVENT_ID_PATTERN = "^[A-Za-z0-9._:-]+$"

DETAIL = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "What was wrong, in words"}},
}
FIELD_ERRORS = {
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "description": (
                f"FastAPI's shape: one entry per error, at most {MAX_LISTED_ERRORS} of them; when "
                "there were more, a last entry of type `too_many_errors` says how many were "
                "not listed."
            ),
            "items": {
                "type": "object",
                "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string"},
                    "loc": {
                        "type": "array",
                        "description": '["body", <item index, for a batch>, <field>, ...]',
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                },
            },
        }
    },
}
UNAVAILABLE = {
    "type": "object",
    "required": ["detail", "event_ids"],
    "properties": {
        "detail": {"type": "string"},
        "event_ids": {
            "type": "array",
            "items": {"type": "string"},
            "description": (
                "The ids the request's events carry, in order (the client's, or those the server "
                "assigned). After a Redis timeout the events may have been enqueued after all: "
                "retry with these ids and each event is still counted once."
            ),
        },
    },
}


IGNORED = {
    "type": "object",
    "required": ["status", "reason"],
    "properties": {"status": {"const": "ignored"}, "reason": {"const": "bot"}},
    "additionalProperties": False,
}


def event_routes_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        (event_schema,), components = msgspec.json.schema_components(
            [Event], ref_template="#/components/schemas/{name}"
        )
        _describe_event(components["Event"], settings)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        batch_schema = {
            "type": "array",
            "items": event_schema,
            "minItems": 1,
            "maxItems": settings.max_batch_events,
            "description": (
                f"1 to {settings.max_batch_events} events (QUEUEFLOW_MAX_BATCH_EVENTS); all are "
                "enqueued or none"
            ),
        }
        schema["paths"]["/event"] = {
            "post": _operation(
                "Accept one event",
                event_schema,
                {
                    "required": ["status", "event_id"],
                    "properties": {
                        "status": {"const": "accepted"},
                        "event_id": {"type": "string"},
                    },
                },
                settings,
            )
        }
        schema["paths"]["/events"] = {
            "post": _operation(
                "Accept a batch of events (all or nothing)",
                batch_schema,
                {
                    "required": ["status", "accepted", "event_ids"],
                    "properties": {
                        "status": {"const": "accepted"},
                        "accepted": {"type": "integer"},
                        "event_ids": {"type": "array", "items": {"type": "string"}},
                    },
                },
                settings,
            )
        }
        schema["paths"]["/tracker.js"] = {
            "get": {
                "summary": "The tracker for web pages",
                "tags": ["ingest"],
                "description": (
                    'README "On a web page". ETag and Cache-Control: public, max-age=3600; '
                    "304 on If-None-Match; gzip when accepted. No query parameters."
                ),
                "responses": {
                    "200": {
                        "description": "The script",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "Not modified (If-None-Match names its ETag)"},
                    "403": {"description": "An Origin not in QUEUEFLOW_CORS_ORIGINS"},
                    "422": {
                        "description": "A query parameter (never ignored)",
                        "content": {"application/json": {"schema": DETAIL}},
                    },
                },
            }
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _text(schema: dict[str, Any]) -> dict[str, Any]:
    """The string branch of a field's schema (optional fields are `anyOf [string, null]`)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            return branch
    raise AssertionError(f"no string branch in {schema}")


def _bytes(field: str) -> str:
    return f"at most {BYTE_LIMITS[field]} bytes of UTF-8"


def _describe_event(event: dict[str, Any], settings: Settings) -> None:
    """Say in the Event schema exactly what ingest enforces beyond what msgspec emitted."""
    days = settings.max_event_age_days
    window = (
        f"within the last {days} days (QUEUEFLOW_MAX_EVENT_AGE_DAYS) and at most 5 minutes ahead"
        if days
        else "at most 5 minutes ahead (QUEUEFLOW_MAX_EVENT_AGE_DAYS=0: no lower bound)"
    )
    event["description"] = (
        "One analytics event. Unknown fields and repeated keys (a field, or a property name, "
        "given twice) are refused. String lengths are characters (maxLength) and, where said, "
        "also UTF-8 bytes: what the store indexes."
    )
    fields = event["properties"]
    rules = {
        "site_id": (
            f"^{NO_CONTROLS}+$",
            f"1-256 characters and {_bytes('site_id')}; no control characters",
        ),
        "event_type": (f"^{NO_CONTROLS}+$", "1-64 characters; no control characters"),
        "path": (
            f"^/{NO_CONTROLS}*$",
            f"Starts with '/'; at most 2048 characters and {_bytes('path')}; no control characters",
        ),
        "user_id": (f"^{NO_CONTROLS}+$", "1-256 characters; no control characters"),
        "event_id": (
            EVENT_ID_PATTERN,
            "The client's idempotency key: 1-128 characters of A-Z a-z 0-9 . _ : - "
            "(the same id sent twice for a site is counted once). Without one the server "
            "assigns a UUIDv7.",
        ),
        "referrer": (
            f"^{NO_CONTROLS}*$",
            f"At most 2048 characters and {_bytes('referrer')}; no control characters",
        ),
    }
    for name, (pattern, description) in rules.items():
        _text(fields[name])["pattern"] = pattern
        fields[name]["description"] = description
    _text(fields["timestamp"])["format"] = "date-time"
    fields["timestamp"]["description"] = (
        "An RFC 3339 / ISO 8601 date-time, e.g. 2026-11-23T09:30:00Z or "
        "2026-11-23T09:30:00+01:00; without an offset it is UTC. It must be " + window + ". "
        "Absent (or null): the time ingest accepts the event, counted on that UTC day."
    )
    props = fields["properties"]["anyOf"][0]
    props["propertyNames"]["pattern"] = f"^{NO_CONTROLS}+$"
    _text(props["additionalProperties"])["pattern"] = "^[^\\u0000]*$"
    props["description"] = (
        "A flat object of at most 30 properties; names 1-64 characters without control "
        "characters; values strings (at most 512 characters, no NUL), numbers, booleans or "
        "null. Nothing nested."
    )


def _operation(summary: str, body: dict, accepted: dict, settings: Settings) -> dict[str, Any]:
    content = {"application/json": {"schema": body}, "text/plain": {"schema": body}}
    limit = settings.max_body_bytes

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer"},
        }
    }
    return {
        "summary": summary,
        "tags": ["ingest"],
        "description": (
            "Content-Type `application/json`, or `text/plain` holding JSON (as "
            "navigator.sendBeacon sends it); a charset parameter, if any, must be utf-8. "
            "Content-Encoding `gzip` or `identity`. The body is at most "
            f"{limit} bytes (QUEUEFLOW_MAX_BODY_BYTES) as sent and, for gzip, once inflated."
        ),
        "requestBody": {"required": True, "content": content},
        "responses": {
            "202": answer(
                "Accepted and enqueued; or, from a known crawler (QUEUEFLOW_DROP_BOTS), ignored: "
                "valid, counted as dropped, not enqueued",
                {"oneOf": [{"type": "object", **accepted}, IGNORED]},
            ),
            "400": answer(
                "The body is not JSON (or not UTF-8, or nested too deeply), is not valid gzip, "
                "or the client disconnected before it ended",
                DETAIL,
            ),
            "403": answer(
                "The Origin header names an origin not in QUEUEFLOW_CORS_ORIGINS; nothing was "
                "read or enqueued",
                DETAIL,
            ),
            "413": answer(
                f"The body is over {limit} bytes, as sent or once inflated; nothing was read "
                "past the limit",
                DETAIL,
            ),
            "415": answer(
                "Content-Type missing or not application/json or text/plain, a charset other "
                "than utf-8, or a Content-Encoding other than gzip or identity",
                DETAIL,
            ),
            "422": answer("Validation failed; nothing was enqueued", FIELD_ERRORS),
            "503": {
                **answer(
                    "Redis unavailable or too slow, or the workers' backlog over "
                    "QUEUEFLOW_BACKLOG_LIMIT. The events were valid; retry them with their ids",
                    UNAVAILABLE,
                ),
                "headers": retry_after,
            },
        },
    }
