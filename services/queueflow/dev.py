"""`queueflow dev`: the whole pipeline on one machine.

Starts Valkey and PostgreSQL from their wheels unless REDIS_URL / DATABASE_URL are set,
migrates, serves ingest and reporting on one port and runs QUEUEFLOW_WORKERS worker
processes on the ports after it. Ctrl-C stops the workers (each finishes its batch), the
HTTP server and then the servers, in that order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic import PostgresDsn, RedisDsn
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from queueflow import __version__
from queueflow.core.config import Settings, service_environment
from queueflow.core.http_telemetry import route_paths
from queueflow.core.probes import add_probe_routes
from queueflow.core.query_params import strict_app
from queueflow.core.serving import make_server, serve_until, stop_on_signals
from queueflow.core.tracing import Tracing
from queueflow.embedded import die_with_parent, start_postgres, start_valkey
from queueflow.ingest.app import IngestApp, ingest_state
from queueflow.reporting.app import get_store
from queueflow.runtime import migrate_command, run_async

log = structlog.get_logger(__name__)


async def _redis_check(request: Request) -> None:
    await ingest_state(request).stream.ping()


async def _postgres_check(request: Request) -> None:
    await get_store(request).ping()


class CombinedApp:
    """Ingest and reporting behind one port. The probes (/healthz, /readyz checking Redis and
    PostgreSQL, /metrics) and the docs (/docs, /openapi.json holding both apps' paths) are
    served here for both; a request any other reporting route matches goes to reporting (its
    own route table decides, so new reporting routes need nothing here); the rest to ingest.
    Both lifespans run, and their states are merged (their keys do not overlap)."""

    def __init__(self, ingest: IngestApp, reporting: FastAPI) -> None:
        self.ingest, self.reporting = ingest, reporting
        self.shared = strict_app(title="QueueFlow (ingest + reporting)", version=__version__)
        add_probe_routes(self.shared, {"redis": _redis_check, "postgres": _postgres_check})
        self.shared.openapi = self._openapi  # type: ignore[method-assign]
        self.shared_paths = frozenset(route_paths(self.shared))
        self.reporting_routes = [
            route
            for route in reporting.router.routes
            if getattr(route, "path", None) not in self.shared_paths
        ]
        self.route_paths = ingest.route_paths | route_paths(reporting) | self.shared_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["path"] in self.ingest.endpoints:  # the event routes: no table walk
            await self.ingest(scope, receive, send)
        elif scope["path"] in self.shared_paths:
            await self.shared(scope, receive, send)
        elif self._is_reporting(scope):
            await self.reporting(scope, receive, send)
        else:
            await self.ingest(scope, receive, send)

    def _is_reporting(self, scope: Scope) -> bool:
        # PARTIAL (the path matches, the method does not) stays with reporting: its 405.
        return any(route.matches(scope)[0] is not Match.NONE for route in self.reporting_routes)

    def _openapi(self) -> dict[str, Any]:
        app = self.shared
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for part in (self.ingest.api.openapi(), self.reporting.openapi()):
            _merge(schema.setdefault("paths", {}), part.get("paths", {}), "paths")
            components = schema.setdefault("components", {})
            for section, entries in part.get("components", {}).items():
                _merge(components.setdefault(section, {}), entries, f"components.{section}")
        app.openapi_schema = schema
        return schema

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with AsyncExitStack() as stack:
            for app in (self.ingest.api, self.reporting):
                try:
                    state = await stack.enter_async_context(app.router.lifespan_context(app))
                except Exception as exc:
                    log.error("could not start", app=app.title, exc_info=exc)
                    message = f"{app.title} could not start: {exc!r}"
                    await send({"type": "lifespan.startup.failed", "message": message})
                    return  # the stack stops whatever had started
                scope["state"].update(state or {})
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def _merge(into: dict[str, Any], entries: dict[str, Any], where: str) -> None:
    """Add `entries` to `into`; a name both define must be defined the same (the probes and
    FastAPI's validation-error schemas are), else the combined document would be wrong."""
    for name, entry in entries.items():
        if name in into and into[name] != entry:
            raise ValueError(f"ingest and reporting define {where}.{name} differently")
        into[name] = entry


def run_dev(
    settings: Settings,
    *,
    host: str,
    port: int,
    data_dir: Path,
    fresh: bool,
    tracing: Tracing | None = None,
) -> int:
    with contextlib.ExitStack() as cleanup:
        if settings.redis_url is None or settings.database_url is None:
            if fresh:
                shutil.rmtree(data_dir, ignore_errors=True)
            print(f"queueflow dev: embedded servers keep their data in {data_dir}/", flush=True)
        if settings.redis_url is None:
            valkey = start_valkey(data_dir / "valkey")
            cleanup.callback(valkey.stop)
            settings = settings.model_copy(update={"redis_url": RedisDsn(valkey.url)})
        if settings.database_url is None:
            postgres = start_postgres(data_dir / "postgres")
            cleanup.callback(postgres.stop)
            settings = settings.model_copy(update={"database_url": PostgresDsn(postgres.url)})
        run_async(migrate_command(settings))
        workers = [_start_worker(settings, host, port + 1 + i, i) for i in range(settings.workers)]
        cleanup.callback(_stop_workers, workers, settings.shutdown_timeout)
        _print_banner(settings, host, port, len(workers))
        return run_async(_serve(settings, host, port, tracing))
    return 0


async def _serve(settings: Settings, host: str, port: int, tracing: Tracing | None) -> int:
    from queueflow.ingest.app import create_app as create_ingest
    from queueflow.reporting.app import create_app as create_reporting

    app = CombinedApp(create_ingest(settings, tracing), create_reporting(settings, tracing))
    server = make_server(app, host, port, settings, access_log=settings.access_log, tracing=tracing)
    await serve_until(server, stop_on_signals())
    return 0


def _start_worker(settings: Settings, host: str, port: int, index: int) -> subprocess.Popen:
    # Every setting of this process (its flags included) reaches the worker the way a deployed
    # one reads them: from the environment.
    own = settings.model_copy(update={"consumer": f"{settings.consumer}-dev-{index}"})
    env = {**os.environ, **service_environment(own, secrets=True)}
    command = [sys.executable, "-m", "queueflow", "worker", "--host", host, "--port", str(port)]
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent(signal.SIGTERM))


def _stop_workers(workers: list[subprocess.Popen], timeout_s: float) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout_s + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _print_banner(settings: Settings, host: str, port: int, workers: int) -> None:
    base = f"http://{host}:{port}"
    lines = [
        "",
        "QueueFlow is running",
        f"  ingest + reporting  {base}   (POST /event, POST /events, GET /stats, /docs)",
        *(f"  worker {i}            http://{host}:{port + 1 + i}/metrics" for i in range(workers)),
        f"  redis               {_without_password(str(settings.redis_url))}",
        f"  postgres            {_without_password(str(settings.database_url))}",
        "  Ctrl-C stops everything",
        "",
    ]
    print("\n".join(lines), flush=True)


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
