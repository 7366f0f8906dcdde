"""The reporting service: GET /stats answers a site's daily totals from the aggregate tables.
Query strings are read exactly (core/query_params.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar

import asyncpg
import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError
from redis.exceptions import RedisError

from queueflow import __version__
from queueflow.core.config import Settings
from queueflow.core.ingest_counts import day_counts
from queueflow.core.probes import add_probe_routes
from queueflow.core.query_params import strict_app
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EventStream, connect
from queueflow.core.tracing import Tracing
from queueflow.reporting.freshness import Watermark
from queueflow.reporting.tokens import Access, StatsTokens

log = structlog.get_logger(__name__)


class PathViews(BaseModel):
    path: str
    views: int


class FreshAnswer(BaseModel):
    """What every stats answer says of its own freshness (README "Freshness")."""

    as_of: datetime | None = Field(
        description="Every event ingest accepted before this instant (UTC) is counted; null "
        "when Redis cannot be read"
    )
    lag_entries: int | None = Field(
        description="Events accepted and not yet committed, all sites together; null when "
        "Redis cannot be read"
    )
    complete: bool = Field(description="The answer's period ended before as_of")


class IngestStatsResponse(FreshAnswer):
    site_id: str
    date: date
    accepted: int = Field(description="Events accepted and enqueued")
    dropped: dict[str, int] = Field(description="Valid events not enqueued, by reason (bot)")
    rejected: dict[str, int] = Field(
        description="Events refused, by reason (validation), where their site_id could be read"
    )


class DailyStatsResponse(FreshAnswer):
    site_id: str
    date: date
    total_views: int
    unique_users: int
    top_paths: list[PathViews]


MAX_SITE_ID_BYTES = 256  # as ingest accepts: a longer site_id can never have data


def _site_id_bytes(value: str) -> str:
    if len(value.encode()) > MAX_SITE_ID_BYTES:
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max_bytes} bytes in UTF-8",
            {"max_bytes": MAX_SITE_ID_BYTES},
        )
    return value


SiteIdQuery = Annotated[
    str,
    Query(min_length=1, max_length=MAX_SITE_ID_BYTES, description="The site"),
    AfterValidator(_site_id_bytes),
]
DateQuery = Annotated[date | None, Query(description="UTC day, YYYY-MM-DD [today]")]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="How many top paths")]


@dataclass(frozen=True, slots=True)
class ReportingState:
    """What reporting's lifespan opens, held in the ASGI state under one key (so `queueflow
    dev` can merge it with ingest's)."""

    store: EventStore
    watermark: Watermark
    stream: EventStream | None  # None without REDIS_URL

    KEY: ClassVar[str] = "reporting"

    @classmethod
    def of(cls, request: Request) -> ReportingState:
        return request.scope["state"][cls.KEY]


def get_store(request: Request) -> EventStore:
    return ReportingState.of(request).store


StoreDep = Annotated[EventStore, Depends(get_store)]
TOKEN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token, or an unknown one (QUEUEFLOW_STATS_TOKENS is set)"},
    403: {"description": "The token does not cover this site"},
}


def create_app(settings: Settings, tracing: Tracing | None = None) -> FastAPI:
    database_url = settings.database_dsn()

    tokens = StatsTokens(settings.stats_tokens)
    bearer = HTTPBearer(auto_error=False, description="QUEUEFLOW_STATS_TOKENS")

    # Dependencies as defaults, not Annotated aliases: this module's annotations are strings
    # that FastAPI resolves in the module's globals, where these local objects do not exist.
    credentials = Depends(bearer)  # its parsing is unused; it puts the scheme in OpenAPI

    def access(request: Request, _: HTTPAuthorizationCredentials | None = credentials) -> Access:
        return tokens.access(request.headers.get("authorization"))

    authorized = Depends(access)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ReportingState]]:
        if tokens.open:
            log.warning("reporting is open to anyone who can reach it: set QUEUEFLOW_STATS_TOKENS")
        pool = await create_pool(database_url, max_size=settings.db_pool_size)
        # Redis is read for freshness only; without it the answers say they do not know.
        client = (
            None
            if settings.redis_url is None
            else connect(settings.redis_dsn(), timeout_s=settings.redis_timeout_s)
        )
        stream = None if client is None else EventStream(client, settings)
        watermark = Watermark(stream, settings.redis_timeout_s)
        try:
            state = ReportingState(EventStore(pool, tracing), watermark, stream)
            yield {ReportingState.KEY: state}
        finally:
            await pool.close()
            if client is not None:
                await client.aclose()

    app = strict_app(title="QueueFlow reporting", version=__version__, lifespan=lifespan)

    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.InternalClientError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", error=repr(exc))
        return JSONResponse(
            {"detail": "Database unavailable, retry later"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.get(
        "/stats",
        tags=["reporting"],
        summary="A site's totals for one UTC day",
        responses=TOKEN_ERRORS,
    )
    async def stats(
        request: Request,
        store: StoreDep,
        site_id: SiteIdQuery,
        date: DateQuery = None,
        limit: LimitQuery = 10,
        allowed: Access = authorized,
    ) -> DailyStatsResponse:
        allowed.site(site_id)
        day = date or datetime.now(UTC).date()
        fresh = await ReportingState.of(request).watermark.read()  # before the counts: as_of holds
        found = await store.daily_stats(site_id, day, limit)
        return DailyStatsResponse(
            **fresh.fields(day),
            site_id=site_id,
            date=day,
            total_views=found.total_views,
            unique_users=found.unique_users,
            top_paths=[PathViews(path=p, views=v) for p, v in found.top_paths],
        )

    @app.get(
        "/stats/ingest",
        tags=["reporting"],
        summary="What ingest did with a site's events on one UTC day",
        responses={**TOKEN_ERRORS, 503: {"description": "Redis, which holds them, unavailable"}},
    )
    async def ingest_stats(
        request: Request,
        site_id: SiteIdQuery,
        date: DateQuery = None,
        allowed: Access = authorized,
    ) -> IngestStatsResponse:
        """Events counted by ingest on the UTC day it saw them: accepted, dropped (bots) and
        rejected (invalid, where a site_id could be read); kept 400 days, in Redis."""
        allowed.site(site_id)
        day = date or datetime.now(UTC).date()
        state = ReportingState.of(request)
        if state.stream is None:
            raise HTTPException(503, detail="REDIS_URL is not set for reporting")
        fresh = await state.watermark.read()
        try:
            async with asyncio.timeout(settings.redis_timeout_s):
                counts = await day_counts(state.stream.client, settings.stream, day, site_id)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("ingest counts unavailable", error=repr(exc))
            raise HTTPException(503, detail="Redis unavailable, retry later") from None
        return IngestStatsResponse(
            **fresh.fields(day),
            site_id=site_id,
            date=day,
            accepted=counts.accepted,
            dropped={"bot": 0, **counts.dropped},
            rejected={"validation": 0, **counts.rejected},
        )

    async def database_check(request: Request) -> None:
        await get_store(request).ping()

    add_probe_routes(app, {"postgres": database_check})
    return app
