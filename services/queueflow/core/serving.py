"""Running an ASGI app under uvicorn while the caller owns the process's signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn

from queueflow.core.config import Settings
from queueflow.core.http_protocol import limited_protocol
from queueflow.core.http_telemetry import HttpTelemetry, route_paths
from queueflow.core.tracing import Tracing


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The command installs its own SIGTERM/SIGINT handling and sets should_exit, so a clean
        # stop exits 0 instead of uvicorn re-raising the signal after shutdown.
        yield


def make_server(
    app: Any,
    host: str,
    port: int,
    settings: Settings | None = None,
    *,
    access_log: bool = True,
    tracing: Tracing | None = None,
    graceful_s: int = 10,
) -> Server:
    """uvicorn serving `app` with HttpTelemetry around it (metrics, access log, spans), under
    the settings' HTTP limits (the environment's, or the defaults, without `settings`)."""
    settings = settings if settings is not None else Settings()
    config = uvicorn.Config(
        HttpTelemetry(app, route_paths(app), access_log=access_log, tracing=tracing),
        host=host,
        port=port,
        loop="none",
        http=limited_protocol(
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
        ),
        timeout_keep_alive=settings.http_keepalive_timeout_s,  # type: ignore[arg-type]
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=graceful_s,
        server_header=False,
        backlog=2048,
    )
    return Server(config)


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until(server: Server, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then stop accepting, drain in-flight requests and return."""
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task
    if not server.started:
        raise RuntimeError(f"could not serve on {server.config.host}:{server.config.port}")
