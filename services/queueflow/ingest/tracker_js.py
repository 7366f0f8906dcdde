"""GET /tracker.js: the tracker (tracker/tracker.min.js, made from tracker/tracker.js by
`make tracker`) as a core/static_asset.py asset, with an hour of caching and CORS."""

from __future__ import annotations

from importlib.resources import files

from starlette.types import Receive, Scope, Send

from queueflow.core.static_asset import StaticAsset
from queueflow.ingest.cors import Cors, origin_of

TRACKER_PATH = "/tracker.js"
SCRIPT = files("queueflow.ingest") / "tracker" / "tracker.min.js"
METHODS = b"GET, HEAD"


class TrackerScript:
    def __init__(self, cors: Cors) -> None:
        self.cors = cors
        self.asset = StaticAsset(SCRIPT.read_bytes(), b"text/javascript; charset=utf-8")
        self.headers = [
            (b"cache-control", b"public, max-age=3600"),
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
        status, body, headers = self.asset.answer(
            b",".join(request.get(b"accept-encoding", [])),
            b",".join(request.get(b"if-none-match", [])),
        )
        return status, body, [*self.headers, *cors, *headers]
