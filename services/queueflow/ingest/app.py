"""The ingestion service: POST /event and POST /events append validated events to the stream.

The two event routes are plain ASGI endpoints: they read the body under the size limit
(gunzipping it, under the same limit, for `Content-Encoding: gzip`), decode and validate it
with msgspec and XADD in one round trip, skipping FastAPI's request parsing and dependency
solving on the hot path. Every answer is 202, 400, 413, 415, 422 or 503 and carries a
Content-Length. FastAPI serves everything else and documents the event routes in its OpenAPI
schema.
"""

from __future__ import annotations

import asyncio
import zlib
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
from queueflow.core.query_params import strict_app
from queueflow.core.stream import EventStream, connect
from queueflow.ingest.backpressure import Backlog
from queueflow.ingest.openapi import event_routes_openapi

JSON_TYPES = (b"application/json", b"text/plain")  # text/plain: navigator.sendBeacon(string)
MEDIA_TYPE_ERROR = "Content-Type must be application/json or text/plain (charset utf-8, if any)"
ENCODING_ERROR = "Content-Encoding must be gzip or identity"
_encode = msgspec.json.Encoder().encode


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    """The client went away before sending its whole body: nothing may be enqueued."""


class BadGzip(Exception):
    """A body sent as gzip that does not inflate (400)."""


def media_type_ok(value: bytes | None) -> bool:
    """JSON or text/plain, with no charset but UTF-8 (`;charset=UTF-8`, as sendBeacon sends
    it, is fine). A missing Content-Type is refused like any other."""
    if value == b"application/json":  # the usual case, parsed no further
        return True
    if value is None:
        return False
    media, _, params = value.partition(b";")
    if media.strip().lower() not in JSON_TYPES:
        return False
    for param in params.split(b";"):
        name, _, given = param.partition(b"=")
        if name.strip().lower() == b"charset" and given.strip().strip(b'"').lower() != b"utf-8":
            return False
    return True


def content_coding(value: bytes) -> bytes | None:
    """b"gzip", b"" for identity (or none), None for anything else (br, deflate, unknown,
    or gzip twice)."""
    codings = [c.strip().lower() for c in value.split(b",")]
    codings = [c for c in codings if c and c != b"identity"]
    if not codings:
        return b""
    if codings in ([b"gzip"], [b"x-gzip"]):
        return b"gzip"
    return None


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body (every member of it), stopping at limit + 1 bytes of output: a
    small body that inflates to gigabytes costs no more than one at the limit."""
    out, size = [], 0
    while data:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
        try:
            chunk = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise BadGzip(str(exc)) from None
        size += len(chunk)
        if size > limit:
            raise TooLarge
        if not inflater.eof:  # under the output cap, so all input was used: it ended early
            raise BadGzip("the gzip stream is truncated")
        out.append(chunk)
        data = inflater.unused_data
    return b"".join(out)


class EventEndpoint:
    """ASGI endpoint for one event (`batch=False`) or an array of events (`batch=True`)."""

    def __init__(self, settings: Settings, *, batch: bool) -> None:
        self.batch = batch
        self.max_body = settings.max_body_bytes
        self.max_events = settings.max_batch_events
        self.window = EventWindow(settings.max_event_age_days)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = await self.handle(scope, receive)
        # Always a Content-Length: an HTTP/1.0 client cannot read a chunked answer.
        headers = [*headers, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list]:
        content_type = coding = None
        declared_length, content_types = None, 0
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type, content_types = value, content_types + 1
            elif name == b"content-length":
                declared_length = int(value) if value.isdigit() else None
            elif name == b"content-encoding":
                coding = value if coding is None else coding + b"," + value
        if content_types != 1 or not media_type_ok(content_type):
            return _reject("media_type", 415, MEDIA_TYPE_ERROR)
        gzipped = False
        if coding is not None:
            coding = content_coding(coding)
            if coding is None:
                return _reject("media_type", 415, ENCODING_ERROR)
            gzipped = coding == b"gzip"
        try:
            if declared_length is not None and declared_length > self.max_body:
                raise TooLarge
            raw = await self._read_body(receive)
            if gzipped:
                raw = gunzip(raw, self.max_body)
        except TooLarge:
            return _reject("too_large", 413, f"Request body exceeds {self.max_body} bytes")
        except Disconnected:
            return _reject("disconnected", 400, "Client disconnected before the body ended")
        except BadGzip as exc:
            return _reject("malformed_json", 400, f"Body is not valid gzip: {exc}")
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
        ids = [e.event_id for e in events]
        # A 503 names the ids the events carry: after a Redis timeout they may be in the
        # stream yet, and a client that retries with them is still counted once.
        if scope["state"]["backlog"].over:  # checked after validation: bad input gets its 4xx
            return _reject(
                "backpressure",
                503,
                "Workers are behind, retry later",
                extra_headers=[(b"retry-after", b"5")],
                event_ids=ids,
            )
        try:
            await self._append(scope["state"]["stream"], [encode_event(e) for e in events])
        except StreamUnavailable:
            return _reject(
                "redis_unavailable",
                503,
                "Event queue unavailable, retry later",
                extra_headers=[(b"retry-after", b"1")],
                event_ids=ids,
            )
        obs.INGEST_ACCEPTED.inc(len(events))
        if self.batch:
            obs.INGEST_BATCH_EVENTS.observe(len(events))
            reply = {"status": "accepted", "accepted": len(ids), "event_ids": ids}
        else:
            reply = {"status": "accepted", "event_id": ids[0]}
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


def _reject(
    reason: str,
    status: int,
    detail: str,
    extra_headers: list | None = None,
    event_ids: list[str] | None = None,
) -> tuple:
    obs.INGEST_REJECTED.labels(reason).inc()
    body: dict[str, Any] = {"detail": detail}
    if event_ids is not None:
        body["event_ids"] = event_ids
    return status, _encode(body), _JSON_HEADERS + (extra_headers or [])


_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
_NOT_ALLOWED_HEADERS = [
    *_JSON_HEADERS,
    (b"allow", b"POST"),
    (b"content-length", b"%d" % len(_NOT_ALLOWED)),
]


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
            await send(
                {"type": "http.response.start", "status": 405, "headers": _NOT_ALLOWED_HEADERS}
            )
            await send({"type": "http.response.body", "body": _NOT_ALLOWED})


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

    api = strict_app(title="QueueFlow ingest", version=__version__, lifespan=lifespan)

    async def redis_check(request: Request) -> None:
        await request.state.stream.ping()

    add_probe_routes(api, {"redis": redis_check})
    event_routes_openapi(api, settings)
    endpoints = {
        "/event": EventEndpoint(settings, batch=False),
        "/events": EventEndpoint(settings, batch=True),
    }
    return IngestApp(api, endpoints)
