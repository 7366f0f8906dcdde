"""GET /tracker.js: the tracker (tracker/tracker.min.js, made from tracker/tracker.js by
`make tracker`), with an ETag, an hour of caching, 304 on If-None-Match and gzip when asked.
Both bodies and the ETag are made once, at start."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable
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
        digest = hashlib.sha256(self.plain).hexdigest()[:20].encode()
        # One ETag per representation: the gzipped body is other bytes.
        self.etags = {False: b'"%s"' % digest, True: b'"%s-gz"' % digest}
        self.headers = [
            (b"cache-control", b"public, max-age=3600"),
            (b"vary", b"accept-encoding"),
            (b"x-content-type-options", b"nosniff"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, headers = self.answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        head = scope["method"] == "HEAD"
        await send({"type": "http.response.body", "body": b"" if head else body})

    def answer(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        origin = origin_of(scope)
        if scope["method"] == "OPTIONS":
            status, headers = self.cors.preflight(origin, METHODS)
            return status, b"", [*headers, (b"content-length", b"0")]
        cors = self.cors.headers_for(scope)
        if not self.cors.allows(origin):
            return 403, b"", [*cors, (b"content-length", b"0")]
        if scope["query_string"]:  # never ignored, as on every route (core/query_params.py)
            body = b'{"detail":"GET /tracker.js takes no query parameters"}'
            json = (b"content-type", b"application/json")
            return 422, body, [*cors, json, (b"content-length", b"%d" % len(body))]
        if scope["method"] not in ("GET", "HEAD"):
            allow = [(b"allow", b"GET, HEAD, OPTIONS"), (b"content-length", b"0")]
            return 405, b"", [*cors, *allow]
        request: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:  # a header given twice counts as one list
            request.setdefault(name, []).append(value)
        zipped = _accepts_gzip(b",".join(request.get(b"accept-encoding", [])))
        etag = self.etags[zipped]
        headers = [*self.headers, *cors, (b"etag", etag)]
        if _matches(b",".join(request.get(b"if-none-match", [])), self.etags.values()):
            return 304, b"", headers
        headers.append((b"content-type", b"text/javascript; charset=utf-8"))
        body = self.gzipped if zipped else self.plain
        if zipped:
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", b"%d" % len(body)))
        return 200, body, headers


def _accepts_gzip(value: bytes) -> bool:
    """gzip (or *) listed in Accept-Encoding without q=0."""
    for item in value.lower().split(b","):
        coding, _, params = item.strip().partition(b";")
        if coding.strip() in (b"gzip", b"*"):
            q = params.strip().removeprefix(b"q=") if params.strip().startswith(b"q=") else b"1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def _matches(if_none_match: bytes, etags: Iterable[bytes]) -> bool:
    """If-None-Match names one of our ETags (weakly compared, as RFC 9110 says), or is *."""
    tags = {tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")}
    return b"*" in tags or any(etag in tags for etag in etags)
