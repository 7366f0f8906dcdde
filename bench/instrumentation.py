"""Step `instrumentation` (not in --smoke): single-event ingest bare (no access log, no
tracing), as deployed (access log at info), and with tracing exported over OTLP/HTTP to a
local sink (every request, and 1% sampled), in alternating half-length runs."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import load
from bench.context import STREAM, Bench
from bench.figures import Result
from bench.report import summarize

# Each variant: the settings it changes, and its OTEL_* variables when it exports traces
# (to the sink, whose endpoint is added).
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, str] | None]] = {
    "bare": ({"access_log": False}, None),
    "access_log": ({"log_level": "info"}, None),
    "access_log_and_tracing": ({"log_level": "info"}, {}),
    "access_log_and_tracing_1pct": (
        {"log_level": "info"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    ),
}


@dataclass(frozen=True)
class InstrumentationResult(Result):
    NEST = "instrumentation"

    bare: dict[str, Any]  # report.summarize's figures, one per variant
    access_log: dict[str, Any]
    access_log_and_tracing: dict[str, Any]
    access_log_and_tracing_1pct: dict[str, Any]


def run(bench: Bench) -> InstrumentationResult:
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with otlp_sink() as endpoint, contextlib.ExitStack() as stack:
        urls = {}
        for name, (settings, otel) in VARIANTS.items():
            env = None if otel is None else {**otel, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
            service = bench.service("ingest", quiet=True, extra_env=env, **settings)
            urls[name] = stack.enter_context(service).url
        for _ in range(bench.args.runs):
            for name, url in urls.items():
                bench.settle(STREAM)
                # Half-length runs: four variants must fit the bench's 10 minutes.
                seconds = max(1, bench.args.duration // 2)
                runs[name].append(load.http(f"{url}/event", "single", seconds))
    bench.redis.delete(STREAM)
    return InstrumentationResult(**{name: summarize(r) for name, r in runs.items()})


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts every export and drops it."""

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
