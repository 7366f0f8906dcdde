"""What the reporting routes answer: one model per answer, each with its OpenAPI example
(README "Reporting API")."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Interval = Literal["day", "hour"]
Dimension = Literal["path", "event_type", "referrer"]
FRESH_EXAMPLE: dict[str, Any] = {
    "as_of": "2026-12-01T14:03:12.201000Z",
    "lag_entries": 12,
    "complete": True,
}


def example(answer: dict[str, Any]) -> ConfigDict:
    """A model config whose OpenAPI example is `answer` with freshness fields (merged with a
    parent model's config by pydantic)."""
    return ConfigDict(json_schema_extra={"examples": [{**FRESH_EXAMPLE, **answer}]})


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

    model_config = example(
        {
            "site_id": "example.com",
            "date": "2026-11-30",
            "accepted": 5120,
            "dropped": {"bot": 311},
            "rejected": {"validation": 4},
        }
    )


class DailyStatsResponse(FreshAnswer):
    site_id: str
    date: date
    total_views: int
    unique_users: int = Field(description="Distinct user ids among all of the day's events")
    top_paths: list[PathViews]

    model_config = example(
        {
            "site_id": "example.com",
            "date": "2026-11-30",
            "total_views": 1520,
            "unique_users": 311,
            "top_paths": [{"path": "/", "views": 700}],
        }
    )


class RangeAnswer(FreshAnswer):
    site_id: str
    from_: date = Field(alias="from", description="First UTC day, inclusive")
    to: date = Field(description="Last UTC day, inclusive")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class RangeStatsResponse(RangeAnswer):
    total_views: int
    unique_users: int = Field(
        description="Distinct user ids among all of the range's events (not a sum of days)"
    )
    top_paths: list[PathViews]

    model_config = example(
        {
            "site_id": "example.com",
            "from": "2026-11-24",
            "to": "2026-11-30",
            "total_views": 2563,
            "unique_users": 484,
            "top_paths": [{"path": "/", "views": 1017}],
        }
    )


class Point(BaseModel):
    start: datetime = Field(description="The bucket's first instant, UTC")
    views: int
    unique_users: int = Field(description="Distinct user ids among the bucket's events")


class TimeseriesResponse(RangeAnswer):
    interval: Interval
    points: list[Point]

    model_config = example(
        {
            "site_id": "example.com",
            "from": "2026-11-29",
            "to": "2026-11-30",
            "interval": "day",
            "points": [
                {"start": "2026-11-29T00:00:00Z", "views": 385, "unique_users": 186},
                {"start": "2026-11-30T00:00:00Z", "views": 0, "unique_users": 0},
            ],
        }
    )


class BreakdownRow(BaseModel):
    value: str | None = Field(description="The path, referrer (null: none) or event type")
    events: int = Field(description="Page views (path, referrer) or events (event_type)")
    unique_users: int = Field(description="Distinct user ids among the events this row counts")


class BreakdownResponse(RangeAnswer):
    by: Dimension
    rows: list[BreakdownRow]

    model_config = example(
        {
            "site_id": "example.com",
            "from": "2026-11-24",
            "to": "2026-11-30",
            "by": "referrer",
            "rows": [
                {"value": None, "events": 1026, "unique_users": 300},
                {"value": "https://www.google.com/", "events": 516, "unique_users": 184},
            ],
        }
    )


class RealtimeResponse(FreshAnswer):
    site_id: str
    minutes: int
    views: int = Field(description="Page views with a timestamp in the last `minutes`")
    unique_users: int = Field(description="Distinct user ids among those minutes' events")

    model_config = example(
        {"site_id": "example.com", "minutes": 5, "views": 26, "unique_users": 28, "complete": False}
    )


class SiteRow(BaseModel):
    site_id: str
    first_date: date
    last_date: date
    total_views: int


class SitesResponse(BaseModel):
    sites: list[SiteRow]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sites": [
                        {
                            "site_id": "example.com",
                            "first_date": "2026-11-24",
                            "last_date": "2026-12-01",
                            "total_views": 2696,
                        }
                    ]
                }
            ]
        }
    )
