"""/healthz, /readyz and /metrics, served the same way by every service (the worker included)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

# A dependency check: returns when the dependency answers, raises when it does not.
Check = Callable[[Request], Awaitable[None]]


class Readiness(BaseModel):
    """/readyz's body (documentation only): each check's "ok" or "unavailable: <why>"."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


_NOT_READY: dict[str, Any] = {
    "description": 'A dependency is unreachable: status "unavailable", the failing check named',
    "model": Readiness,
}
_METRICS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format (version 0.0.4)",
        "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    }
}


class NotReady(Exception):
    """Raised by a check whose message an operator should read in /readyz."""


def add_probe_routes(app: FastAPI, checks: Mapping[str, Check]) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Every dependency is reachable",
        responses={200: {"model": Readiness}, 503: _NOT_READY},
    )
    async def readyz(request: Request) -> JSONResponse:
        results = {}
        for name, check in checks.items():
            try:
                await check(request)
                results[name] = "ok"
            except NotReady as exc:
                results[name] = f"unavailable: {exc}"
            except Exception as exc:
                results[name] = f"unavailable: {type(exc).__name__}"
        ready = all(value == "ok" for value in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": results},
            status_code=200 if ready else 503,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses=_METRICS,
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
