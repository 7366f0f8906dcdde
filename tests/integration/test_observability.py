"""What SREs see, checked after a real workload: every metric on the right service moved by the
right amount, JSON logs with trace ids, and traces linking ingest to the worker's batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from queueflow.core import tracing
from queueflow.core.store import EventStore
from queueflow.ingest.app import create_app
from queueflow.worker.consumer import Consumer
from tests.helpers import Service, event, running, serve, service_env, until


def samples(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, keyed by name and sorted labels."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert "_created" not in text  # one series per metric, not a creation timestamp beside it
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and counts trace exports."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp_sink() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_metrics_logs_and_export_after_a_workload(settings, tmp_path: Path, otlp_sink) -> None:
    env = {
        **service_env(settings),
        "QUEUEFLOW_LOG_LEVEL": "info",
        "QUEUEFLOW_STREAM_METRICS_INTERVAL_MS": "100",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    unique = [event(event_id=f"obs-{i}", user_id=f"u{i % 7}") for i in range(40)]
    resent = unique[:6]
    ingest = Service("ingest", env, log_file=tmp_path / "ingest.log").wait_healthy()
    worker = Service("worker", env, log_file=tmp_path / "worker.log").wait_healthy()
    reporting = Service("reporting", env).wait_healthy()
    try:
        assert httpx.post(f"{ingest.url}/events", json=unique[:30]).status_code == 202
        for item in unique[30:]:
            assert httpx.post(f"{ingest.url}/event", json=item).status_code == 202
        assert httpx.post(f"{ingest.url}/events", json=resent).status_code == 202
        bad = httpx.post(
            f"{ingest.url}/event", content=b"{", headers={"content-type": "text/plain"}
        )
        assert bad.status_code == 400
        assert httpx.post(f"{ingest.url}/event", json={"site_id": 1}).status_code == 422
        odd = httpx.post(f"{ingest.url}/event", content=b"x", headers={"content-type": "a/b"})
        assert odd.status_code == 415
        assert httpx.get(f"{ingest.url}/wp-admin/../etc").status_code == 404
        day = unique[0]["timestamp"][:10]
        for query in (f"date={day}", f"date={day}&limit=3", "date=nope"):
            httpx.get(f"{reporting.url}/stats?site_id=shop&{query}")

        until_sync(lambda: worker.metric("queueflow_worker_events_processed_total") == 40)
        until_sync(lambda: worker.metric("queueflow_stream_consumers") >= 1)
        sent = len(unique) + len(resent)

        found = samples(ingest.url)
        assert value(found, "queueflow_ingest_events_accepted_total") == sent
        for reason, count in [("malformed_json", 1), ("validation", 1), ("media_type", 1)]:
            assert value(found, "queueflow_ingest_events_rejected_total", reason=reason) == count
        assert value(found, "queueflow_ingest_events_rejected_total", reason="backpressure") == 0
        assert value(found, "queueflow_ingest_batch_events_count") == 2
        assert value(found, "queueflow_ingest_batch_events_sum") == 30 + len(resent)
        assert value(found, "queueflow_http_requests_total", route="/event", status="202") == 10
        assert value(found, "queueflow_http_requests_total", route="/events", status="202") == 2
        assert value(found, "queueflow_http_requests_total", route="other", status="404") == 1
        assert not any("wp-admin" in str(labels) for _, labels in found)  # bounded labels
        assert (
            value(
                found, "queueflow_http_request_duration_seconds_count", route="/event", status="202"
            )
            == 10
        )
        assert value(found, "process_resident_memory_bytes") > 0

        found = samples(worker.url)
        assert value(found, "queueflow_worker_events_processed_total") == 40
        assert value(found, "queueflow_worker_events_duplicate_total") == len(resent)
        assert value(found, "queueflow_worker_event_freshness_seconds_count") == sent
        assert value(found, "queueflow_worker_batch_size_events_sum") == sent
        assert value(found, "queueflow_worker_batch_duration_seconds_count") >= 1
        assert value(found, "queueflow_worker_retries_total", dependency="postgres") == 0
        for kind in ("max_deliveries", "undecodable", "rejected"):
            assert value(found, "queueflow_worker_events_dead_lettered_total", reason=kind) == 0
        until_sync(lambda: worker.metric("queueflow_stream_lag_entries") == 0)
        until_sync(lambda: worker.metric("queueflow_stream_pending_entries") == 0)
        found = samples(worker.url)
        assert value(found, "queueflow_stream_consumers", partition="0") == 1
        assert value(found, "queueflow_stream_oldest_pending_age_seconds", partition="0") == 0
        assert value(found, "queueflow_dead_letter_length_entries") == 0
        assert "queueflow_stream_length_entries" in {name for name, _ in found}

        found = samples(reporting.url)
        assert value(found, "queueflow_http_requests_total", route="/stats", status="200") == 2
        assert value(found, "queueflow_http_requests_total", route="/stats", status="422") == 1
        assert (
            value(
                found, "queueflow_http_request_duration_seconds_count", route="/stats", status="200"
            )
            == 2
        )
    finally:
        for service in (ingest, worker, reporting):
            assert service.stop() == 0

    # Logs: every line is JSON; one per request and per batch, with the trace ids.
    requests = [line for line in ingest.log_lines() if line["event"] == "request"]
    assert {r["route"] for r in requests} >= {"/event", "/events", "/metrics"}
    traced = [r for r in requests if r["route"] == "/events" and r["status"] == 202]
    assert traced and all(len(r["trace_id"]) == 32 and len(r["span_id"]) == 16 for r in traced)
    batches = [line for line in worker.log_lines() if line["event"] == "batch committed"]
    assert sum(b["stored"] for b in batches) == 40
    assert sum(b["duplicates"] for b in batches) == len(resent)
    assert all("trace_id" in b and b["duration_ms"] >= 0 for b in batches)
    # Connection URLs (and so their credentials) stay out of the logs.
    for name in ("ingest.log", "worker.log"):
        text = (tmp_path / name).read_text()
        assert str(settings.database_url) not in text and str(settings.redis_url) not in text
    # Spans reached the OTLP endpoint over HTTP.
    assert _Sink.exports >= 2


def until_sync(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter behind the process's tracer provider, tracing on for
    this module only (a provider can be installed once per process)."""
    exporter = InMemorySpanExporter()
    TRACED.append(tracing.configure_tracing("test", exporter=exporter))
    yield exporter
    TRACED.clear()


TRACED: list[tracing.Tracing] = []  # what `spans` configured, handed to the parts it traces


async def test_worker_batch_span_links_to_each_ingest_span(parts, settings, spans) -> None:
    stream, store = parts
    (traced,) = TRACED
    store = EventStore(store.pool, traced)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with serve(create_app(settings, traced), tracing=traced) as client:
        reply = await client.post(
            "/events",
            json=[event(event_id=f"t{i}") for i in range(3)],
            headers={"traceparent": parent},
        )
        assert reply.status_code == 202
        assert (await client.post("/event", json=event(event_id="t3"))).status_code == 202
    async with running(Consumer(stream, store, settings, traced)):
        await until(lambda: store.pool.fetchval("SELECT count(*) = 4 FROM events"))
    trace.get_tracer_provider().force_flush()
    finished = spans.get_finished_spans()

    # Each request's server span is its producer: it names the stream and the batch size.
    servers = [s for s in finished if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    assert sorted(s.name for s in servers) == ["POST /event", "POST /events"]
    counts = {s.name: s.attributes["messaging.batch.message_count"] for s in servers}
    assert counts == {"POST /event": 1, "POST /events": 3}
    assert all(s.attributes["messaging.destination.name"] == settings.stream for s in servers)
    batch_request = next(s for s in servers if s.name == "POST /events")
    assert format(batch_request.context.trace_id, "032x") == parent.split("-")[1]

    (batch,) = [s for s in finished if s.kind == SpanKind.CONSUMER]
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in servers}
    assert batch.attributes["messaging.system"] == "redis"
    assert batch.attributes["messaging.operation.type"] == "process"
    assert batch.attributes["messaging.destination.name"] == settings.stream
    assert batch.attributes["messaging.consumer.group.name"] == settings.group
    assert batch.attributes["messaging.batch.message_count"] == 4
    inserts = [s for s in finished if s.name == "INSERT events"]
    assert any(s.parent and s.parent.span_id == batch.context.span_id for s in inserts)
    assert all(s.attributes["db.system.name"] == "postgresql" for s in inserts)
