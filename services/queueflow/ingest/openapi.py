"""OpenAPI documentation for the event routes, generated from the msgspec model they decode."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from queueflow.core.config import Settings
from queueflow.core.events import Event

ERROR = {"type": "object", "properties": {"detail": {}}}


def event_routes_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        (event_schema,), components = msgspec.json.schema_components(
            [Event], ref_template="#/components/schemas/{name}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        batch_schema = {
            "type": "array",
            "items": event_schema,
            "minItems": 1,
            "maxItems": settings.max_batch_events,
        }
        schema["paths"]["/event"] = {
            "post": _operation(
                "Accept one event",
                event_schema,
                {"status": {"const": "accepted"}, "event_id": {"type": "string"}},
            )
        }
        schema["paths"]["/events"] = {
            "post": _operation(
                "Accept a batch of events (all or nothing)",
                batch_schema,
                {
                    "status": {"const": "accepted"},
                    "accepted": {"type": "integer"},
                    "event_ids": {"type": "array", "items": {"type": "string"}},
                },
            )
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operation(summary: str, body: dict, accepted: dict) -> dict[str, Any]:
    content = {"application/json": {"schema": body}, "text/plain": {"schema": body}}
    error = {"application/json": {"schema": ERROR}}
    return {
        "summary": summary,
        "tags": ["ingest"],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "202": {
                "description": "Accepted and enqueued",
                "content": {
                    "application/json": {"schema": {"type": "object", "properties": accepted}}
                },
            },
            "400": {"description": "Body is not JSON", "content": error},
            "413": {"description": "Body over the size limit", "content": error},
            "415": {"description": "Unsupported Content-Type", "content": error},
            "422": {"description": "Validation failed; nothing was enqueued", "content": error},
            "503": {
                "description": "Queue unavailable or backlog over its limit; see Retry-After",
                "content": error,
            },
        },
    }
