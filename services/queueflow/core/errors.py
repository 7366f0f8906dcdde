"""Named failures that callers handle differently."""

from __future__ import annotations

from typing import Any

# A 422 lists at most this many errors, then says how many more there were: an invalid body
# costs about what a valid one does, and so does its answer.
MAX_LISTED_ERRORS = 50


class ConfigError(Exception):
    """A setting is missing or malformed: the process stops with exit code 2."""


class StreamUnavailable(Exception):
    """Redis could not take the write in time: ingest answers 503 with Retry-After."""


class MigrationError(Exception):
    """The migration files and the database's record of them disagree."""


class InvalidEvents(Exception):
    """Validation failed; `errors` is FastAPI's 422 `detail` list, at most MAX_LISTED_ERRORS
    of them and then, when there were more, one entry saying how many were not listed."""

    def __init__(self, errors: list[dict[str, Any]], unlisted: int = 0) -> None:
        unlisted += max(0, len(errors) - MAX_LISTED_ERRORS)
        errors = errors[:MAX_LISTED_ERRORS]
        if unlisted:
            msg = f"{unlisted} more errors not listed (the first {len(errors)} are)"
            errors.append({"type": "too_many_errors", "loc": ["body"], "msg": msg})
        super().__init__(errors)
        self.errors = errors


class MalformedJSON(Exception):
    """The body is not JSON at all (400)."""
