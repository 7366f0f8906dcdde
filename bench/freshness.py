"""Step `freshness`: p50/p95 seconds from Redis accepting an event to its commit, at half the
pipeline's measured maximum: the lower of batch ingest's and one worker's drain rate, so it
needs the `ingest` and `drain` steps' figures."""

from __future__ import annotations

from dataclasses import dataclass

from bench import load
from bench.context import Bench
from bench.drain import DrainResult
from bench.figures import Result
from bench.ingest import IngestResult
from bench.processes import wait_until
from bench.report import freshness


@dataclass(frozen=True)
class FreshnessResult(Result):
    freshness_at_events_per_s: int
    freshness_s: dict[str, float]  # p50, p95 (seconds), events (how many were observed)


def half_max_rate(ingest: IngestResult, drain: DrainResult) -> float:
    """Events/s at half of what the pipeline can take: freshness and the soak run at it."""
    return 0.5 * min(ingest.ingest_batch["events_per_s"], drain.drain_1_worker_events_per_s)


def run(bench: Bench, ingest: IngestResult, drain: DrainResult) -> FreshnessResult:
    rate = half_max_rate(ingest, drain)
    bench.reset()
    with (
        bench.service("ingest") as ingest_service,
        bench.service("worker", consumer="fresh") as worker,
    ):
        load.steady(f"{ingest_service.url}/events", rate, bench.args.duration)
        # Every event committed (the histogram is observed before the ack), then read.
        wait_until(lambda: bench.stream.backlog() == 0, 60, what="freshness load committed")
        quantiles = freshness(worker.url)
    return FreshnessResult(round(rate), quantiles)
