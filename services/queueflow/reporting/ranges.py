"""The range of UTC days a reporting route answers for: `from` and `to`, inclusive, from ≤ to,
at most QUEUEFLOW_MAX_RANGE_DAYS long. A range that breaks a rule is a 422 naming the
parameter, in FastAPI's error shape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from queueflow.core.query_params import query_error


def _finite(day: date) -> date:
    # asyncpg sends date.min and date.max as -infinity and infinity: a series between them
    # would never end.
    if day in (date.min, date.max):
        raise PydanticCustomError(
            "date_out_of_range", "Input should be a day from 0001-01-02 to 9999-12-30", {}
        )
    return day


Day = Annotated[date, AfterValidator(_finite)]
DayQuery = Annotated[Day | None, Query(description="UTC day, YYYY-MM-DD [today]")]
FromQuery = Annotated[
    Day | None, Query(alias="from", description="First UTC day, YYYY-MM-DD, inclusive [to]")
]
ToQuery = Annotated[Day | None, Query(description="Last UTC day, YYYY-MM-DD, inclusive [today]")]


def field_error(key: str, message: str, value: Any) -> RequestValidationError:
    return RequestValidationError([query_error("value_error", key, message, value)])


@dataclass(frozen=True, slots=True)
class DayRange:
    first: date
    last: date

    @property
    def length(self) -> int:
        return (self.last - self.first).days + 1

    @classmethod
    def one(cls, day: date) -> DayRange:
        return cls(day, day)

    @classmethod
    def of(cls, first: date | None, last: date | None, max_days: int) -> DayRange:
        """from defaults to to, to to today (UTC)."""
        last = last or datetime.now(UTC).date()
        first = first or last
        if first > last:
            raise field_error("from", "from must not be after to", str(first))
        if (last - first).days + 1 > max_days:
            raise field_error(
                "to",
                f"A range covers at most {max_days} days (QUEUEFLOW_MAX_RANGE_DAYS)",
                str(last),
            )
        return cls(first, last)


def end_of_day(day: date) -> datetime:
    """The first instant after the UTC day `day` (never the last day: see Day)."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
