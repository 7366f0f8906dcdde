"""The ingestion service: POST /event and POST /events append validated events to the stream.

The two event routes are plain ASGI endpoints: they read the body under the size limit,
decode and validate it with msgspec and XADD in one round trip, skipping FastAPI's request
parsing and dependency solving on the hot path. FastAPI serves everything else and documents
the event routes in its OpenAPI schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from opentelemetry import trace
from starlette.types import Receive, Scope, Send

from queueflow import __version__
from queueflow.core import observability as obs
from queueflow.core import tracing
from queueflow.core.config import Settings
from queueflow.core.errors import StreamUnavailable
from queueflow.core.events import (
    EventWindow,
    InvalidEvents,
    MalformedJSON,
    decode_batch,
    decode_event,
    encode_event,
    new_event_ids,
)
from queueflow.core.http_telemetry import route_paths
from queueflow.core.probes import add_probe_routes
from queueflow.core.stream import EventStream, connect
from queueflow.ingest.backpressure import Backlog
from queueflow.ingest.openapi import event_routes_openapi

JSON_TYPES = (b"application/json", b"text/plain")  # text/plain: navigator.sendBeacon(string)
_encode = msgspec.json.Encoder().encode


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    """The client went away before sending its whole body: nothing may be enqueued."""


class EventEndpoint:
    """ASGI endpoint for one event (`batch=False`) or an array of events (`batch=True`)."""

    def __init__(self, settings: Settings, *, batch: bool) -> None:
        self.batch = batch
        self.max_body = settings.max_body_bytes
        self.max_events = settings.max_batch_events
        self.window = EventWindow(settings.max_event_age_days)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = await self.handle(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list]:
        content_type, declared_length = b"", None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.split(b";", 1)[0].strip().lower()
            elif name == b"content-length":
                declared_length = int(value) if value.isdigit() else None
        if content_type and content_type not in JSON_TYPES:
            return _reject("media_type", 415, "Content-Type must be application/json or text/plain")
        if scope["state"]["backlog"].over:
            return _reject(
                "backpressure",
                503,
                "Workers are behind, retry later",
                extra_headers=[(b"retry-after", b"5")],
            )
        try:
            if declared_length is not None and declared_length > self.max_body:
                raise TooLarge
            raw = await self._read_body(receive)
        except TooLarge:
            return _reject("too_large", 413, f"Request body exceeds {self.max_body} bytes")
        except Disconnected:
            return _reject("disconnected", 400, "Client disconnected before the body ended")
        try:
            if self.batch:
                events = decode_batch(raw, self.window, self.max_events)
            else:
                events = [decode_event(raw, self.window)]
        except MalformedJSON as exc:
            return _reject("malformed_json", 400, f"Body is not valid JSON: {exc}")
        except InvalidEvents as exc:
            obs.INGEST_REJECTED.labels("validation").inc()
            return 422, _encode({"detail": exc.errors}), _JSON_HEADERS
        missing = [e for e in events if e.event_id is None]
        for event, event_id in zip(missing, new_event_ids(len(missing)), strict=True):
            event.event_id = event_id
        try:
            await self._append(scope["state"]["stream"], [encode_event(e) for e in events])
        except StreamUnavailable:
            return _reject(
                "redis_unavailable",
                503,
                "Event queue unavailable, retry later",
                extra_headers=[(b"retry-after", b"1")],
            )
        obs.INGEST_ACCEPTED.inc(len(events))
        if self.batch:
            obs.INGEST_BATCH_EVENTS.observe(len(events))
            ids = [e.event_id for e in events]
            reply = {"status": "accepted", "accepted": len(ids), "event_ids": ids}
        else:
            reply = {"status": "accepted", "event_id": events[0].event_id}
        return 202, _encode(reply), _JSON_HEADERS

    async def _append(self, stream: EventStream, payloads: list[bytes]) -> None:
        if not tracing.state.enabled:
            await stream.add(payloads)
            return
        # The request's server span is also the producer: its context goes into each entry
        # for the worker. A second, producer span per request would double tracing's cost.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": "redis",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": stream.name,
                    "messaging.batch.message_count": len(payloads),
                }
            )
        await stream.add(payloads, tracing.traceparent(span))

    async def _read_body(self, receive: Receive) -> bytes:
        """Read the body, giving up as soon as it passes the limit (before any parsing)."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


_JSON_HEADERS = [(b"content-type", b"application/json")]


def _reject(reason: str, status: int, detail: str, extra_headers: list | None = None) -> tuple:
    obs.INGEST_REJECTED.labels(reason).inc()
    return status, _encode({"detail": detail}), _JSON_HEADERS + (extra_headers or [])


class IngestApp:
    """The ingest ASGI app: POST /event and /events go straight to their endpoints (no
    middleware stack, no routing table); everything else, the lifespan included, to FastAPI."""

    def __init__(self, api: FastAPI, endpoints: dict[str, EventEndpoint]) -> None:
        self.api = api
        self.endpoints = endpoints
        self.route_paths = set(endpoints) | route_paths(api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope.get("path", ""))
        if endpoint is None or scope["type"] != "http":
            await self.api(scope, receive, send)
        elif scope["method"] == "POST":
            await endpoint(scope, receive, send)
        else:
            headers = [*_JSON_HEADERS, (b"allow", b"POST")]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"detail":"Method Not Allowed"}'})


def create_app(settings: Settings) -> IngestApp:
    redis_url = settings.redis_dsn()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        client = connect(redis_url, timeout_s=settings.redis_timeout_s)
        stream = EventStream(client, settings)
        backlog = Backlog(
            stream, limit=settings.backlog_limit, refresh_s=settings.backlog_refresh_ms / 1000
        )
        await backlog.refresh()
        watching = asyncio.create_task(backlog.run())
        try:
            yield {"stream": stream, "backlog": backlog}
        finally:
            watching.cancel()
            await client.aclose()

    api = FastAPI(title="QueueFlow ingest", version=__version__, lifespan=lifespan)

    async def redis_check(request: Request) -> None:
        await request.state.stream.ping()

    add_probe_routes(api, {"redis": redis_check})
    event_routes_openapi(api, settings)
    endpoints = {
        "/event": EventEndpoint(settings, batch=False),
        "/events": EventEndpoint(settings, batch=True),
    }
    return IngestApp(api, endpoints)
