"""The reporting service: GET /stats answers a site's daily totals from the aggregate tables.
Query strings are read exactly (core/query_params.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar

import asyncpg
import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError

from queueflow import __version__
from queueflow.core.config import Settings
from queueflow.core.ingest_counts import day_counts
from queueflow.core.probes import add_probe_routes
from queueflow.core.query_params import strict_app
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import REDIS_ERRORS, EventStream, connect
from queueflow.core.tracing import Tracing
from queueflow.reporting.answers import (
    BreakdownResponse,
    BreakdownRow,
    DailyStatsResponse,
    Dimension,
    IngestStatsResponse,
    Interval,
    PathViews,
    Point,
    RangeStatsResponse,
    RealtimeResponse,
    SiteRow,
    SitesResponse,
    TimeseriesResponse,
)
from queueflow.reporting.csv_answer import Format, respond
from queueflow.reporting.dashboard import add_dashboard
from queueflow.reporting.freshness import Freshness, Watermark
from queueflow.reporting.ranges import (
    DayQuery,
    DayRange,
    FromQuery,
    ToQuery,
    end_of_day,
    field_error,
)
from queueflow.reporting.tokens import Access, StatsTokens

log = structlog.get_logger(__name__)
MAX_HOUR_RANGE_DAYS = 31


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
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="How many rows")]
FormatQuery = Annotated[
    Format | None, Query(description="csv for a CSV answer (as Accept: text/csv) [json]")
]


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
CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer; as text/csv with format=csv or Accept: text/csv",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}
TOKEN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token, or an unknown one (QUEUEFLOW_STATS_TOKENS is set)"},
    403: {"description": "The token does not cover this site"},
    503: {"description": "The database (for /stats/ingest: Redis) unavailable; Retry-After"},
}


def create_app(settings: Settings, tracing: Tracing | None = None) -> FastAPI:
    database_url = settings.database_read_dsn()

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
            else connect(
                settings.redis_dsn(),
                timeout_s=settings.redis_timeout_s,
                cluster=settings.redis_cluster,
            )
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
    if settings.reporting_cors_origins:
        # Pages of these origins may read the answers with a token (a dashboard elsewhere).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.reporting_cors_origins.split(","),
            allow_methods=["GET"],
            allow_headers=["authorization"],
            expose_headers=["X-QueueFlow-As-Of", "X-QueueFlow-Lag", "X-QueueFlow-Complete"],
            max_age=86_400,
        )

    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.InternalClientError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    @app.exception_handler(asyncpg.UndefinedTableError)  # the schema not migrated yet
    @app.exception_handler(asyncpg.UndefinedColumnError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", error=repr(exc))
        return JSONResponse(
            {"detail": "Database unavailable, retry later"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    def day_range(from_: FromQuery = None, to: ToQuery = None) -> DayRange:
        return DayRange.of(from_, to, settings.max_range_days)

    def optional_range(from_: FromQuery = None, to: ToQuery = None) -> DayRange | None:
        """/stats: a range only when from or to is given (else its date)."""
        return None if from_ is None and to is None else day_range(from_, to)

    in_range = Depends(day_range)

    async def answer(
        request: Request,
        format: Format | None,
        build: Callable[[Freshness], Awaitable[BaseModel]],
    ) -> Response:
        """The freshness read before the counts (so as_of holds), the answer as JSON or CSV."""
        fresh = await ReportingState.of(request).watermark.read()
        return respond(request, format, await build(fresh))

    @app.get(
        "/stats",
        tags=["reporting"],
        summary="A site's totals for one UTC day, or over a range of days",
        response_model=DailyStatsResponse | RangeStatsResponse,
        responses={**TOKEN_ERRORS, **CSV_ANSWER},
    )
    async def stats(
        request: Request,
        store: StoreDep,
        site_id: SiteIdQuery,
        allowed: Access = authorized,
        date: DayQuery = None,
        limit: LimitQuery = 10,
        format: FormatQuery = None,
        days: DayRange | None = Depends(optional_range),  # noqa: B008
    ) -> Response:
        """With `date` (default today), the day's answer; with `from`/`to`, the range's, whose
        unique_users counts each user once over the whole range."""
        allowed.site(site_id)
        if date is not None and days is not None:
            raise field_error("date", "Give date, or from and to, not both", str(date))
        span = days or DayRange.one(date or datetime.now(UTC).date())

        async def build(fresh: Freshness) -> BaseModel:
            found = await store.totals(site_id, span.first, span.last, limit)
            figures = {
                "site_id": site_id,
                "total_views": found.views,
                "unique_users": found.unique_users,
                "top_paths": [PathViews(path=p, views=v) for p, v in found.top_paths],
                **fresh.fields(end_of_day(span.last)),
            }
            if days is None:
                return DailyStatsResponse(date=span.first, **figures)
            return RangeStatsResponse(from_=span.first, to=span.last, **figures)

        return await answer(request, format, build)

    @app.get(
        "/stats/timeseries",
        tags=["reporting"],
        summary="Views and unique users per day or per hour over a range",
        response_model=TimeseriesResponse,
        responses={**TOKEN_ERRORS, **CSV_ANSWER},
    )
    async def timeseries(
        request: Request,
        store: StoreDep,
        site_id: SiteIdQuery,
        allowed: Access = authorized,
        interval: Annotated[Interval, Query(description="Bucket size [day]")] = "day",
        format: FormatQuery = None,
        days: DayRange = in_range,
    ) -> Response:
        """One point per bucket, in order, empty buckets as zeros; hour ranges are at most 31
        days."""
        allowed.site(site_id)
        if interval == "hour" and days.length > MAX_HOUR_RANGE_DAYS:
            raise field_error(
                "to", f"An hour series covers at most {MAX_HOUR_RANGE_DAYS} days", str(days.last)
            )

        async def build(fresh: Freshness) -> BaseModel:
            found = await store.series(site_id, days.first, days.last, interval == "hour")
            return TimeseriesResponse(
                site_id=site_id,
                from_=days.first,
                to=days.last,
                interval=interval,
                points=[
                    Point(start=p.start, views=p.views, unique_users=p.unique_users) for p in found
                ],
                **fresh.fields(end_of_day(days.last)),
            )

        return await answer(request, format, build)

    @app.get(
        "/stats/breakdown",
        tags=["reporting"],
        summary="Events and exact unique users per path, referrer or event type over a range",
        response_model=BreakdownResponse,
        responses={**TOKEN_ERRORS, **CSV_ANSWER},
    )
    async def breakdown(
        request: Request,
        store: StoreDep,
        site_id: SiteIdQuery,
        by: Annotated[Dimension, Query(description="What the rows are")],
        allowed: Access = authorized,
        limit: LimitQuery = 10,
        format: FormatQuery = None,
        days: DayRange = in_range,
    ) -> Response:
        """`path` and `referrer` count page views (a missing referrer is null), `event_type`
        events of every type; rows by events descending, then value in byte order."""
        allowed.site(site_id)

        async def build(fresh: Freshness) -> BaseModel:
            found = await store.breakdown(site_id, days.first, days.last, by, limit)
            return BreakdownResponse(
                site_id=site_id,
                from_=days.first,
                to=days.last,
                by=by,
                rows=[
                    BreakdownRow(value=r.value, events=r.events, unique_users=r.unique_users)
                    for r in found
                ],
                **fresh.fields(end_of_day(days.last)),
            )

        return await answer(request, format, build)

    @app.get(
        "/stats/realtime",
        tags=["reporting"],
        summary="Page views and unique users of the last minutes",
        response_model=RealtimeResponse,
        responses={**TOKEN_ERRORS, **CSV_ANSWER},
    )
    async def realtime(
        request: Request,
        store: StoreDep,
        site_id: SiteIdQuery,
        allowed: Access = authorized,
        minutes: Annotated[int, Query(ge=1, le=60, description="The window, minutes")] = 5,
        format: FormatQuery = None,
    ) -> Response:
        """Events whose timestamp lies in (now - minutes, now]."""
        allowed.site(site_id)

        async def build(fresh: Freshness) -> BaseModel:
            now = datetime.now(UTC)
            views, users = await store.realtime(site_id, now - timedelta(minutes=minutes), now)
            return RealtimeResponse(
                site_id=site_id,
                minutes=minutes,
                views=views,
                unique_users=users,
                **fresh.fields(now),
            )

        return await answer(request, format, build)

    @app.get(
        "/stats/ingest",
        tags=["reporting"],
        summary="What ingest did with a site's events on one UTC day",
        response_model=IngestStatsResponse,
        responses={**TOKEN_ERRORS, **CSV_ANSWER},
    )
    async def ingest_stats(
        request: Request,
        site_id: SiteIdQuery,
        allowed: Access = authorized,
        date: DayQuery = None,
        format: FormatQuery = None,
    ) -> Response:
        """Events counted by ingest on the UTC day it saw them: accepted, dropped (bots) and
        rejected (invalid, where a site_id could be read); kept 400 days, in Redis."""
        allowed.site(site_id)
        day = date or datetime.now(UTC).date()
        state = ReportingState.of(request)
        if state.stream is None:
            raise HTTPException(503, detail="REDIS_URL is not set for reporting")
        stream = state.stream

        async def build(fresh: Freshness) -> BaseModel:
            try:
                async with asyncio.timeout(settings.redis_timeout_s):
                    counts = await day_counts(stream.client, stream.names, day, site_id)
            except REDIS_ERRORS as exc:
                log.warning("ingest counts unavailable", error=repr(exc))
                raise HTTPException(503, detail="Redis unavailable, retry later") from None
            return IngestStatsResponse(
                site_id=site_id,
                date=day,
                accepted=counts.accepted,
                dropped={"bot": 0, **counts.dropped},
                rejected={"validation": 0, **counts.rejected},
                **fresh.fields(end_of_day(day)),
            )

        return await answer(request, format, build)

    @app.get(
        "/sites",
        tags=["reporting"],
        summary="The sites with stored events (a scoped token's own)",
        response_model=SitesResponse,
        responses={**TOKEN_ERRORS, **CSV_ANSWER},
    )
    async def sites(
        request: Request,
        store: StoreDep,
        allowed: Access = authorized,
        format: FormatQuery = None,
    ) -> Response:
        found = await store.sites(None if allowed.sites is None else sorted(allowed.sites))
        answer = SitesResponse(
            sites=[
                SiteRow(
                    site_id=s.site_id,
                    first_date=s.first_date,
                    last_date=s.last_date,
                    total_views=s.total_views,
                )
                for s in found
            ]
        )
        return respond(request, format, answer)

    async def database_check(request: Request) -> None:
        await get_store(request).ping()

    add_probe_routes(app, {"postgres": database_check})
    add_dashboard(app)
    return app
