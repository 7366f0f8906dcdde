"""Logging (structlog, JSON lines by default) and the Prometheus metrics every service exports."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Histogram

# Request latencies measured here sit around 0.2-5 ms; the buckets resolve that range.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

INGEST_ACCEPTED = Counter(
    "queueflow_ingest_events_accepted_total", "Events accepted and appended to the stream."
)
INGEST_REJECTED = Counter(
    "queueflow_ingest_events_rejected_total",
    "Requests rejected before anything was enqueued, by reason.",
    ["reason"],
)
HTTP_REQUESTS = Counter(
    "queueflow_http_requests_total", "HTTP requests by route and status.", ["route", "status"]
)
HTTP_DURATION = Histogram(
    "queueflow_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["route"],
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


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """JSON lines to stdout (console rendering for a terminal); stdlib loggers go the same way."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            # Tracebacks without local variables: those can hold event data and credentials.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
            if fmt == "json"
            else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # no log line per request
