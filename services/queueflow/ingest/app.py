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
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import structlog
from fastapi import FastAPI, Request
from opentelemetry import trace
from redis.exceptions import ClusterDownError, ReadOnlyError, ResponseError, TryAgainError
from starlette.types import Receive, Scope, Send

from queueflow import __version__
from queueflow.core import observability as obs
from queueflow.core.config import Settings
from queueflow.core.errors import InvalidEvents, MalformedJSON, StreamUnavailable
from queueflow.core.event_ids import new_event_ids
from queueflow.core.events import (
    EventWindow,
    decode_batch,
    decode_event,
    encode_event,
)
from queueflow.core.http_telemetry import route_paths
from queueflow.core.ingest_counts import DROPPED, REJECTED
from queueflow.core.probes import add_probe_routes
from queueflow.core.query_params import strict_app
from queueflow.core.stream import REDIS_ERRORS, EventStream, connect
from queueflow.core.tracing import Tracing, traceparent
from queueflow.core.user_ids import UserIdHasher
from queueflow.ingest.accounting import Accounting, readable_sites
from queueflow.ingest.backpressure import Backlog
from queueflow.ingest.body import (
    ENCODING_ERROR,
    MEDIA_TYPE_ERROR,
    QUERY_ERROR,
    TRANSFER_ERROR,
    BadGzip,
    Disconnected,
    TooLarge,
    content_coding,
    gunzip,
    media_type_ok,
    read_body,
)
from queueflow.ingest.bots import is_bot
from queueflow.ingest.cors import Cors, origin_of
from queueflow.ingest.openapi import event_routes_openapi
from queueflow.ingest.tracker_js import TRACKER_PATH, TrackerScript

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class IngestState:
    """What ingest's lifespan opens and every request uses, held in the ASGI state under one
    key (so `queueflow dev` can merge it with reporting's)."""

    stream: EventStream
    backlog: Backlog
    accounting: Accounting

    KEY: ClassVar[str] = "ingest"

    @classmethod
    def of(cls, scope: Scope) -> IngestState:
        return scope["state"][cls.KEY]


def ingest_state(request: Request) -> IngestState:
    return IngestState.of(request.scope)


class EventEndpoint:
    """ASGI endpoint for one event (`batch=False`) or an array of events (`batch=True`)."""

    def __init__(self, settings: Settings, *, batch: bool, tracing: Tracing, cors: Cors) -> None:
        self.batch = batch
        self.tracing = tracing
        self.cors = cors
        self.max_body = settings.max_body_bytes
        self.max_events = settings.max_batch_events
        self.window = EventWindow(settings.max_event_age_days)
        self.drop_bots = settings.drop_bots
        self.hash_user_id = UserIdHasher(settings.user_id_key) if settings.user_id_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = await self.handle(scope, receive)
        # Always a Content-Length: an HTTP/1.0 client cannot read a chunked answer.
        headers = [*headers, *self.cors.headers_for(scope), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list]:
        content_type = coding = origin = user_agent = None
        declared_length, content_types = None, 0
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type, content_types = value, content_types + 1
            elif name == b"content-length":
                declared_length = int(value) if value.isdigit() else None
            elif name == b"user-agent":
                user_agent = value
            elif name == b"content-encoding":
                coding = value if coding is None else coding + b"," + value
            elif name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                # The HTTP parser de-chunks; any other coding (gzip, ...) would pass unread.
                return _reject("media_type", 415, TRANSFER_ERROR)
            elif name == b"origin" and origin is None:  # the first, as origin_of reads it
                origin = value
        if origin is not None and not self.cors.any and not self.cors.allows(origin):
            return _reject("cors", 403, "Origin not allowed (QUEUEFLOW_CORS_ORIGINS)")
        if scope["query_string"]:  # never ignored, as on every route (core/query_params.py)
            return _reject("validation", 422, QUERY_ERROR)
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
            raw = await read_body(receive, self.max_body)
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
            sites = readable_sites(raw, self.max_events)
            IngestState.of(scope).accounting.note(REJECTED + "validation", sites)
            return 422, _encode({"detail": exc.errors}), _JSON_HEADERS
        state = IngestState.of(scope)
        if self.drop_bots and user_agent is not None and is_bot(user_agent):
            obs.INGEST_DROPPED.labels("bot").inc(len(events))
            state.accounting.note(DROPPED + "bot", (e.site_id for e in events))
            return 202, _IGNORED_BOT, _JSON_HEADERS
        if self.hash_user_id is not None:  # before anything leaves this process
            for event in events:
                event.user_id = self.hash_user_id(event.site_id, event.user_id)
        missing = [e for e in events if e.event_id is None]
        for event, event_id in zip(missing, new_event_ids(len(missing)), strict=True):
            event.event_id = event_id
        ids = [e.event_id for e in events if e.event_id is not None]  # all of them, now
        # A 503 names the ids the events carry: after a Redis timeout they may be in the
        # stream yet, and a client that retries with them is still counted once.
        if state.backlog.over:  # checked after validation: bad input gets its 4xx
            return _retry_later("backpressure", "Workers are behind", b"5", ids)
        try:
            await self._append(
                state.stream, [encode_event(e) for e in events], [e.site_id for e in events]
            )
        except StreamUnavailable:
            state.accounting.append_failed()
            return _retry_later("redis_unavailable", "Event queue unavailable", b"1", ids)
        obs.INGEST_ACCEPTED.inc(len(events))
        if self.batch:
            obs.INGEST_BATCH_EVENTS.observe(len(events))
            reply = {"status": "accepted", "accepted": len(ids), "event_ids": ids}
        else:
            reply = {"status": "accepted", "event_id": ids[0]}
        return 202, _encode(reply), _JSON_HEADERS

    async def _append(self, stream: EventStream, payloads: list[bytes], sites: list[str]) -> None:
        if not self.tracing.enabled:
            await stream.add(payloads, sites=sites)
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
        await stream.add(payloads, traceparent(span), sites)


_JSON_HEADERS = [(b"content-type", b"application/json")]
_IGNORED_BOT = _encode({"status": "ignored", "reason": "bot"})


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


# The refusals a cluster answers while a failover or resharding settles: they pass.
FAILING_OVER = (ClusterDownError, ReadOnlyError, TryAgainError)


async def create_groups(stream: EventStream, retry_s: float = 1.0) -> None:
    """Each partition's group, as workers create them: KEDA's triggers read the groups, so a
    new partition's must exist before any worker runs (scaled to zero, none would make it).
    Retried while Redis is unreachable or failing over; any other refusal is logged and
    left to the workers."""
    while True:
        try:
            await stream.ensure_group()
            return
        except REDIS_ERRORS as exc:
            if isinstance(exc, ResponseError) and not isinstance(exc, FAILING_OVER):
                # Refused for good (an ACL without XGROUP, a key of another type): say so.
                log.warning("could not create the consumer groups; workers will", error=str(exc))
                return
            await asyncio.sleep(retry_s)  # unreachable, or a cluster failing over


def _retry_later(reason: str, why: str, seconds: bytes, event_ids: list[str]) -> tuple:
    """A 503 with Retry-After, naming the events' ids (retried with them, counted once)."""
    retry = [(b"retry-after", seconds)]
    return _reject(reason, 503, f"{why}, retry later", extra_headers=retry, event_ids=event_ids)


_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
_NOT_ALLOWED_HEADERS = [
    *_JSON_HEADERS,
    (b"allow", b"POST"),
    (b"content-length", b"%d" % len(_NOT_ALLOWED)),
]


class IngestApp:
    """The ingest ASGI app: POST /event and /events go straight to their endpoints (no
    middleware stack, no routing table), and so do their CORS preflights and /tracker.js;
    everything else, the lifespan included, to FastAPI."""

    def __init__(
        self, api: FastAPI, endpoints: dict[str, EventEndpoint], tracker: TrackerScript
    ) -> None:
        self.api = api
        self.endpoints = endpoints
        self.tracker = tracker
        self.route_paths = {*endpoints, TRACKER_PATH} | route_paths(api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        endpoint = self.endpoints.get(path)
        if scope["type"] != "http":
            await self.api(scope, receive, send)
        elif endpoint is None:
            if path == TRACKER_PATH:
                await self.tracker(scope, receive, send)
            else:
                await self.api(scope, receive, send)
        elif scope["method"] == "POST":
            await endpoint(scope, receive, send)
        elif scope["method"] == "OPTIONS":
            status, headers = endpoint.cors.preflight(origin_of(scope), b"POST")
            headers = [*headers, (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send(
                {"type": "http.response.start", "status": 405, "headers": _NOT_ALLOWED_HEADERS}
            )
            await send({"type": "http.response.body", "body": _NOT_ALLOWED})


def create_app(settings: Settings, tracing: Tracing | None = None) -> IngestApp:
    """The ingest app; `tracing` (off unless given) makes each request's server span the
    producer of its stream entries."""
    tracing = tracing or Tracing.off()
    redis_url = settings.redis_dsn()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, IngestState]]:
        client = connect(
            redis_url, timeout_s=settings.redis_timeout_s, cluster=settings.redis_cluster
        )
        stream = EventStream(client, settings)
        backlog = Backlog(
            stream, limit=settings.backlog_limit, refresh_s=settings.backlog_refresh_ms / 1000
        )
        accounting = Accounting(client, settings.stream, partitions=settings.stream_partitions)
        stream.count = accounting.accepted
        await backlog.refresh()
        background = [
            asyncio.create_task(backlog.run()),
            asyncio.create_task(accounting.run()),
            asyncio.create_task(create_groups(stream)),
        ]
        try:
            yield {IngestState.KEY: IngestState(stream, backlog, accounting)}
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await accounting.flush()  # the last second's drops and rejections
            await client.aclose()

    api = strict_app(title="QueueFlow ingest", version=__version__, lifespan=lifespan)

    async def redis_check(request: Request) -> None:
        await ingest_state(request).stream.ping()

    add_probe_routes(api, {"redis": redis_check})
    event_routes_openapi(api, settings)
    cors = Cors(settings.cors_origins)
    endpoints = {
        "/event": EventEndpoint(settings, batch=False, tracing=tracing, cors=cors),
        "/events": EventEndpoint(settings, batch=True, tracing=tracing, cors=cors),
    }
    return IngestApp(api, endpoints, TrackerScript(cors))
