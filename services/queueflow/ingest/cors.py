"""CORS for the routes web pages call (POST /event, POST /events, GET /tracker.js).

QUEUEFLOW_CORS_ORIGINS is `*` or a list of origins. A request from an origin not listed gets
403 and nothing is enqueued; a request without an Origin header (a server) is never refused.
Every answer says which origin may read it; with a list it names the request's own origin and
varies on it, so caches keep one answer per origin.
"""

from __future__ import annotations

from starlette.types import Scope

Headers = list[tuple[bytes, bytes]]
MAX_AGE = b"86400"


class Cors:
    def __init__(self, origins: str) -> None:
        self.any = origins == "*"
        self.origins = frozenset(o.lower().encode() for o in origins.split(",") if not self.any)
        self._any_headers: Headers = [(b"access-control-allow-origin", b"*")]

    def allows(self, origin: bytes | None) -> bool:
        return self.any or origin is None or origin.lower() in self.origins

    def headers(self, origin: bytes | None) -> Headers:
        """What an answer to a request from `origin` carries (a refused origin: only Vary)."""
        if self.any:
            return self._any_headers
        if origin is None or origin.lower() not in self.origins:
            return [(b"vary", b"origin")]
        return [(b"access-control-allow-origin", origin), (b"vary", b"origin")]

    def headers_for(self, scope: Scope) -> Headers:
        """headers() for a request; with any origin allowed, without reading its headers."""
        return self._any_headers if self.any else self.headers(origin_of(scope))

    def preflight(self, origin: bytes | None, methods: bytes) -> tuple[int, Headers]:
        """The answer to an OPTIONS preflight: 204 with what may be sent, or 403."""
        if not self.allows(origin):
            return 403, [(b"vary", b"origin")]
        return 204, [
            *self.headers(origin),
            (b"access-control-allow-methods", methods),
            (b"access-control-allow-headers", b"content-type"),
            (b"access-control-max-age", MAX_AGE),
        ]


def origin_of(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return value
    return None
