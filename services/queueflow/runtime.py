"""Running a command's coroutine: the event loop, an HTTP app until a signal, migrations.

Shared by cli.py (dispatch) and dev.py (`queueflow dev`), which import it and not each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from queueflow.core.config import Settings
from queueflow.core.tracing import Tracing

T = TypeVar("T")


async def migrate_command(settings: Settings) -> int:
    from queueflow.core.migrations import apply_migrations

    await apply_migrations(settings)
    return 0


async def serve_app(
    app: Any, host: str, port: int, settings: Settings, tracing: Tracing | None = None
) -> int:
    from queueflow.core.serving import make_server, serve_until, stop_on_signals

    server = make_server(app, host, port, settings, access_log=settings.access_log, tracing=tracing)
    await serve_until(server, stop_on_signals())
    return 0


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where installed (it is, with uvicorn[standard])."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is absent on some platforms
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
