"""Logging (structlog, JSON lines by default) and the Prometheus metrics every service exports."""

from __future__ import annotations

import logging
import re
import sys

import msgspec
import structlog
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from structlog.typing import EventDict, Processor

# A `_created` series per counter and histogram doubles what Prometheus stores, for a
# timestamp no dashboard or alert here reads.
disable_created_metrics()

# Request latencies measured here sit around 0.2-5 ms; the buckets resolve that range.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

BUILD_INFO = Gauge(
    "queueflow_build_info",
    "1 for each running QueueFlow process, by service and version.",
    ["service", "version"],
)
INGEST_ACCEPTED = Counter(
    "queueflow_ingest_events_accepted_total", "Events accepted and appended to the stream."
)
INGEST_REJECTED = Counter(
    "queueflow_ingest_events_rejected_total",
    "Requests rejected before anything was enqueued, by reason.",
    ["reason"],
)
INGEST_DROPPED = Counter(
    "queueflow_ingest_events_dropped_total",
    "Valid events answered 202 ignored and not enqueued, by reason (bot: a known crawler).",
    ["reason"],
)
INGEST_BATCH_EVENTS = Histogram(
    "queueflow_ingest_batch_events",
    "Events per accepted POST /events request.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
)
HTTP_REQUESTS = Counter(
    "queueflow_http_requests_total",
    "HTTP requests by route (or 'other') and status.",
    ["route", "status"],
)
HTTP_DURATION = Histogram(
    "queueflow_http_request_duration_seconds",
    "Time to answer an HTTP request, by route and status.",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)
WORKER_PROCESSED = Counter(
    "queueflow_worker_events_processed_total", "Events committed to PostgreSQL for the first time."
)
WORKER_DUPLICATES = Counter(
    "queueflow_worker_events_duplicate_total",
    "Entries whose event_id was already stored (redeliveries and client resends).",
)
WORKER_DEAD_LETTERED = Counter(
    "queueflow_worker_events_dead_lettered_total",
    "Entries moved to the dead-letter stream.",
    ["reason"],
)
WORKER_RETRIES = Counter(
    "queueflow_worker_retries_total",
    "Calls retried after a transient failure, by dependency (redis, postgres).",
    ["dependency"],
)
WORKER_RETRYING = Gauge(
    "queueflow_worker_retrying",
    "1 while the worker is retrying a dependency (its log and /readyz say on what), else 0.",
    ["dependency"],
)
WORKER_RECLAIMED = Counter(
    "queueflow_worker_events_reclaimed_total",
    "Entries claimed with XAUTOCLAIM from consumers that left them pending.",
)
STREAM_TRIMMED = Counter(
    "queueflow_stream_trimmed_entries_total", "Processed entries removed by XTRIM MINID."
)
CONSUMERS_DELETED = Counter(
    "queueflow_stream_consumers_deleted_total", "Idle consumers with nothing pending deleted."
)
EVENT_FRESHNESS = Histogram(
    "queueflow_worker_event_freshness_seconds",
    "Time from Redis accepting an event (its entry id) to the worker committing it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
WORKER_BATCH_SIZE = Histogram(
    "queueflow_worker_batch_size_events",
    "Entries per batch read from the stream.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
WORKER_BATCH_DURATION = Histogram(
    "queueflow_worker_batch_duration_seconds",
    "Time from reading a batch to acknowledging it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# The stream as the group sees it, read by each worker every QUEUEFLOW_STREAM_METRICS_INTERVAL_MS
# (every worker exports the same figures: aggregate them with max, not sum), by `partition`,
# the index of the stream's partition ("0" only, unless QUEUEFLOW_STREAM_PARTITIONS > 1): the
# stream's totals are `sum(max by (partition) (...))`.
STREAM_LENGTH = Gauge(
    "queueflow_stream_length_entries", "Entries in the stream (XLEN).", ["partition"]
)
STREAM_LAG = Gauge(
    "queueflow_stream_lag_entries",
    "Entries not yet delivered to the consumer group.",
    ["partition"],
)
STREAM_PENDING = Gauge(
    "queueflow_stream_pending_entries", "Entries delivered but not yet acknowledged.", ["partition"]
)
STREAM_OLDEST_PENDING_AGE = Gauge(
    "queueflow_stream_oldest_pending_age_seconds",
    "Age of the oldest pending entry (0 when none is pending).",
    ["partition"],
)
STREAM_CONSUMERS = Gauge(
    "queueflow_stream_consumers", "Consumers registered in the group.", ["partition"]
)
DEAD_LETTER_LENGTH = Gauge(
    "queueflow_dead_letter_length_entries", "Entries in the dead-letter stream."
)

# Every label value of a bounded set exists from the start at 0, so rate() and increase()
# see the first failure instead of a series appearing from nowhere.
for _reason in (
    "validation",
    "malformed_json",
    "too_large",
    "media_type",
    "backpressure",
    "redis_unavailable",
    "disconnected",
    "cors",
):
    INGEST_REJECTED.labels(_reason)
INGEST_DROPPED.labels("bot")
for _kind in ("max_deliveries", "undecodable", "rejected"):
    WORKER_DEAD_LETTERED.labels(_kind)
for _dependency in ("redis", "postgres"):
    WORKER_RETRIES.labels(_dependency)
    WORKER_RETRYING.labels(_dependency).set(0)


def add_trace_ids(_logger: object, _method: str, event: EventDict) -> EventDict:
    """trace_id and span_id of the active span, so a log line leads to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


_line_encoder = msgspec.json.Encoder(enc_hook=repr)
# JSON escapes C0 controls (ESC included); msgspec leaves DEL and C1 raw (json.dumps, used for
# stdlib records, escapes all non-ASCII). They are escaped too, so no logged value (a request
# path) can drive the terminal of someone reading the logs.
_RAW_CONTROLS = re.compile(rb"\x7f|\xc2[\x80-\x9f]")  # DEL, and C1 in UTF-8


def _escape_json_control(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match[0].decode())


def _encode_line(event: dict, **_: object) -> bytes:
    line = _line_encoder.encode(event)
    if b"\x7f" in line or b"\xc2" in line:  # two memchr scans, then the rare regex
        line = _RAW_CONTROLS.sub(_escape_json_control, line)
    return line


class _Escaped:
    """A console value shown the way repr() shows a string: quoted, controls escaped."""

    __slots__ = ("text",)

    def __init__(self, value: str) -> None:
        self.text = repr(value)

    def __repr__(self) -> str:
        return self.text


def _escape(text: str, keep: str = "") -> str:
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def escape_controls(_logger: object, _method: str, event: EventDict) -> EventDict:
    """Console format: no control character (C0 with ESC, DEL, C1, or another unprintable one)
    of a logged value reaches the terminal raw, so a request path holding `\\x1b[31m` or a line
    break cannot drive it or forge a line. The renderer prints a plain string as it is."""
    for key, value in event.items():
        if key == "event":
            text = value if isinstance(value, str) else str(value)
            event[key] = text if text.isprintable() else _escape(text.rstrip("\n"))
        elif key in ("exception", "stack"):  # tracebacks keep their line breaks
            event[key] = _escape(value, keep="\n") if isinstance(value, str) else value
        elif isinstance(value, str) and not value.isprintable():
            event[key] = _Escaped(value)  # other types are rendered with repr() already
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """JSON lines to stdout (console rendering for a terminal); stdlib loggers go the same way.

    Exceptions are rendered with their frames but without local variables (those can hold
    event data and credentials): as structlog's dict tracebacks in JSON, as the usual
    traceback text in the console, for QueueFlow's own lines and for stdlib records alike.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]
    if fmt == "console":
        # Plain tracebacks, formatted before escaping: rich's (the default when installed)
        # show local variables and write their own escapes.
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        foreign: list[Processor] = [
            structlog.processors.format_exc_info,
            escape_controls,
            renderer,
        ]
        own: list[Processor] = [structlog.dev.set_exc_info, *foreign]
    else:
        exceptions = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        # QueueFlow's own lines (one per request) are encoded by msgspec straight to bytes, at
        # half json.dumps' cost through print() (bench/README.md, "Findings").
        own = [exceptions, structlog.processors.JSONRenderer(_encode_line)]
        foreign = [exceptions, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *own],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout)
        if fmt == "console"
        else structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *foreign],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # HttpTelemetry writes the access log (with durations): uvicorn's own would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
