"""What every HTTP request leaves behind, the same for each service: its count and duration by
route and status, one access-log line, and (when tracing is on) a server span.

It wraps the whole ASGI app, so it also replaces uvicorn's own access log, with the duration
and in the service's log format. An exception escaping the app is logged on the request's line
with its traceback (access log or not), in place of uvicorn's "Exception in ASGI application".
Routes outside the app's own table are labelled "other", so a scan of random paths cannot grow
the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import structlog
from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queueflow.core import observability as obs
from queueflow.core.tracing import Tracing, context_from_headers

log = structlog.get_logger("queueflow.access")

_SERVER_ERROR_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
}
_SERVER_ERROR_BODY = {"type": "http.response.body", "body": b"Internal Server Error"}


class HttpTelemetry:
    def __init__(
        self,
        app: ASGIApp,
        routes: Collection[str],
        *,
        access_log: bool,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.tracing = tracing or Tracing.off()
        self.routes = frozenset(routes)
        self.access_log = access_log
        self._children: dict[tuple[str, int], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        responded = False

        async def send_status(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        path = scope["path"]
        route = path if path in self.routes else "other"
        span = token = None
        error: Exception | None = None
        if self.tracing.enabled:
            span = self._server_span(scope, route, path)
            # Attached directly, not through use_span's generator: this runs per request.
            token = context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            # Logged here, once, on the request's line with its traceback, and not re-raised:
            # uvicorn would log it again in a line of its own that names no request.
            error = exc
        finally:
            elapsed = time.perf_counter() - started
            self._record(route, status, elapsed)
            if self.access_log or error is not None:  # inside the span's context: its trace_id
                (log.info if error is None else log.error)(
                    "request",
                    method=scope["method"],
                    path=path[:256],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    client=(scope.get("client") or ("",))[0],
                    exc_info=error,
                )
            if span is not None and token is not None:
                context.detach(token)
                if span.is_recording():
                    span.set_attribute("http.response.status_code", status)
                    if error is not None:
                        span.record_exception(error)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                span.end()
        if error is not None and not responded:
            await send(_SERVER_ERROR_START)
            await send(_SERVER_ERROR_BODY)
        # Started but unfinished: uvicorn closes the connection ("without completing response").

    def _server_span(self, scope: Scope, route: str, path: str) -> Span:
        return self.tracing.tracer.start_span(
            f"{scope['method']} {route}",
            context=context_from_headers(scope["headers"]),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "http.route": route,
                "url.path": path,
            },
        )

    def _record(self, route: str, status: int, elapsed: float) -> None:
        children = self._children.get((route, status))
        if children is None:  # labels() costs a lock and a lookup: resolve each pair once
            children = (
                obs.HTTP_REQUESTS.labels(route, status),
                obs.HTTP_DURATION.labels(route, status),
            )
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(elapsed)


def route_paths(app: Any) -> set[str]:
    """The paths an app serves: its `route_paths` if it composes others, else FastAPI's table."""
    paths = getattr(app, "route_paths", None)
    return set(paths) if paths is not None else {route.path for route in app.routes}
