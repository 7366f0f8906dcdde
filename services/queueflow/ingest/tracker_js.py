"""GET /tracker.js: the tracker (tracker/tracker.min.js, made from tracker/tracker.js by
`make tracker`), with an ETag, an hour of caching, 304 on If-None-Match and gzip when asked.
Both bodies and the ETag are made once, at start."""

from __future__ import annotations

import gzip
import hashlib
from importlib.resources import files

from starlette.types import Receive, Scope, Send

from queueflow.ingest.cors import Cors, origin_of

TRACKER_PATH = "/tracker.js"
SCRIPT = files("queueflow.ingest") / "tracker" / "tracker.min.js"
METHODS = b"GET, HEAD"


class TrackerScript:
    def __init__(self, cors: Cors) -> None:
        self.cors = cors
        self.plain = SCRIPT.read_bytes()
        self.gzipped = gzip.compress(self.plain, compresslevel=9, mtime=0)
        self.etag = b'"%s"' % hashlib.sha256(self.plain).hexdigest()[:20].encode()
        self.headers = [
            (b"etag", self.etag),
            (b"cache-control", b"public, max-age=3600"),
            (b"vary", b"accept-encoding"),
            (b"x-content-type-options", b"nosniff"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = self.answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def answer(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        origin = origin_of(scope)
        if scope["method"] == "OPTIONS":
            status, headers = self.cors.preflight(origin, METHODS)
            return status, b"", [*headers, (b"content-length", b"0")]
        if scope["query_string"]:  # never ignored, as on every route (core/query_params.py)
            body = b'{"detail":"GET /tracker.js takes no query parameters"}'
            return (
                422,
                body,
                [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            )
        if scope["method"] not in ("GET", "HEAD"):
            allow = [(b"allow", b"GET, HEAD, OPTIONS"), (b"content-length", b"0")]
            return 405, b"", allow
        if not self.cors.allows(origin):
            return 403, b"", [(b"content-length", b"0")]
        request = dict(scope["headers"])
        headers = [*self.headers, *self.cors.headers(origin)]
        tags = request.get(b"if-none-match", b"").replace(b"W/", b"").split(b",")
        if self.etag in (tag.strip() for tag in tags):
            return 304, b"", headers
        headers.append((b"content-type", b"text/javascript; charset=utf-8"))
        if b"gzip" in request.get(b"accept-encoding", b"").lower():
            body = self.gzipped
            headers.append((b"content-encoding", b"gzip"))
        else:
            body = self.plain
        headers.append((b"content-length", b"%d" % len(body)))
        return 200, body, headers
