"""The dashboard (README "Dashboard"): one page, its script and its style, served by reporting
at / and /dashboard. The page holds no data and no secret: its script reads the API like any
client, with the token the reader gives it. A strict Content-Security-Policy allows nothing
but this origin's own script, style and API."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from queueflow.core.static_asset import StaticAsset

FILES = files("queueflow.reporting") / "dashboard"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
PAGE_PATHS = ("/", "/dashboard")


def add_dashboard(app: FastAPI) -> None:
    """Plain routes, not API ones: the page's own query string (?site=&range=) is for its
    script, so it is neither checked against a declaration nor listed in the OpenAPI document."""
    assets = {
        "/dashboard/app.js": StaticAsset(
            (FILES / "app.js").read_bytes(), b"text/javascript; charset=utf-8"
        ),
        "/dashboard/app.css": StaticAsset(
            (FILES / "app.css").read_bytes(), b"text/css; charset=utf-8"
        ),
    }
    page = StaticAsset((FILES / "index.html").read_bytes(), b"text/html; charset=utf-8")
    for path in PAGE_PATHS:
        assets[path] = page

    async def serve(request: Request) -> Response:
        asset = assets[request.url.path]
        status, body, headers = asset.answer(
            request.headers.get("accept-encoding", "").encode(),
            request.headers.get("if-none-match", "").encode(),
        )
        response = Response(body if request.method == "GET" else b"", status_code=status)
        response.raw_headers = [
            *((k.encode(), v.encode()) for k, v in SECURITY.items()),
            (b"cache-control", b"no-cache"),  # revalidated by ETag: a new release shows at once
            *headers,
        ]
        return response

    for path in assets:
        app.router.add_route(path, serve, methods=["GET", "HEAD"], include_in_schema=False)
