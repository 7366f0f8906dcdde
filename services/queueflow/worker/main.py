"""`queueflow worker`: the consumer plus /healthz, /readyz and /metrics on --port."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import structlog
from fastapi import FastAPI, Request

from queueflow import __version__
from queueflow.core.config import Settings
from queueflow.core.migrations import apply_migrations
from queueflow.core.probes import NotReady, add_probe_routes
from queueflow.core.query_params import strict_app
from queueflow.core.serving import make_server, stop_on_signals
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EventStream, connect
from queueflow.core.tracing import Tracing
from queueflow.worker.consumer import Consumer
from queueflow.worker.raw_days import keep_raw_days
from queueflow.worker.retry import Retrying, Stopping
from queueflow.worker.stream_metrics import export_stream_metrics

log = structlog.get_logger(__name__)


def create_ops_app(stream: EventStream, store: EventStore, consumer: Consumer) -> FastAPI:
    """/healthz, /readyz and /metrics of a worker whose parts run_worker owns (no lifespan:
    the checks hold the parts they check)."""
    app = strict_app(title="QueueFlow worker", version=__version__)

    async def redis_check(request: Request) -> None:
        await stream.ping()

    async def database_check(request: Request) -> None:
        await store.ping()

    async def consumer_check(request: Request) -> None:
        # Dependencies can answer a ping while every batch is refused (permissions, a
        # schema not migrated): the consumer's own retrying says so.
        if problems := consumer.retry.problems():
            retrying = "; ".join(f"{what}: {cause}" for what, cause in problems.items())
            raise NotReady(f"retrying {retrying}")

    add_probe_routes(
        app, {"redis": redis_check, "postgres": database_check, "consumer": consumer_check}
    )
    return app


async def migrate_at_start(settings: Settings, stop: asyncio.Event) -> bool:
    """The worker's start-up step (QUEUEFLOW_AUTO_MIGRATE): apply pending migrations, waiting
    with backoff while PostgreSQL is down (/readyz says so meanwhile), so that no batch is
    written to an older schema. False when a stop came first."""
    if not settings.auto_migrate:
        return True
    try:
        await Retrying(stop).postgres(partial(apply_migrations, settings, attempts=1))
    except Stopping:
        return False
    return True


async def _migrate_then_consume(
    consumer: Consumer, store: EventStore, settings: Settings, stop: asyncio.Event
) -> int | None:
    if not await migrate_at_start(settings, stop):
        return 0  # stopped before consuming anything: nothing is pending
    upkeep = asyncio.create_task(keep_raw_days(store, settings, stop))
    try:
        return await consumer.run(stop)
    finally:
        # Mid-day of a long expiry, it stops at once: the next worker to start goes on.
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep


async def run_worker(
    settings: Settings, host: str, port: int, tracing: Tracing | None = None
) -> int:
    """Run until SIGTERM/SIGINT; returns 0 when the batch in hand was finished in time."""
    stop = stop_on_signals()
    # A blocking XREADGROUP holds the socket for up to block_ms: the read timeout must exceed it.
    client = connect(
        settings.redis_dsn(),
        timeout_s=settings.block_ms / 1000 + settings.redis_timeout_s,
        cluster=settings.redis_cluster,
    )
    # Pipelined batches and a reclaimed page may commit at once: the pool needs two at least.
    pool = await create_pool(settings.database_dsn(), max_size=max(2, settings.db_pool_size))
    stream, store = EventStream(client, settings), EventStore(pool, tracing)
    consumer = Consumer(stream, store, settings, tracing)
    ops = create_ops_app(stream, store, consumer)
    server = make_server(ops, host, port, settings, access_log=settings.access_log)
    serving = asyncio.create_task(server.serve())
    consuming = asyncio.create_task(_migrate_then_consume(consumer, store, settings, stop))
    exporting = asyncio.create_task(
        export_stream_metrics(stream, settings.stream_metrics_interval_ms / 1000, stop)
    )
    log.info(
        "worker started",
        consumer=settings.consumer,
        stream=settings.stream,
        group=settings.group,
        port=port,
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({consuming, serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    code = 0
    try:
        pending_left = await asyncio.wait_for(consuming, settings.shutdown_timeout)
    except TimeoutError:
        # Unacknowledged entries stay pending and another worker reclaims them.
        log.error(
            "shutdown timed out; the batch in hand stays pending",
            timeout_s=settings.shutdown_timeout,
        )
        pending_left = await consumer.pending_left()
        code = 1
    server.should_exit = True
    await asyncio.gather(serving, exporting)
    await asyncio.gather(pool.close(), client.aclose())
    # The last line says what a reclaim will have to pick up (null: Redis could not tell).
    log.info("worker stopped", exit_code=code, pending_left=pending_left)
    return code
