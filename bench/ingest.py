"""Step `ingest`: `POST /event` and `POST /events` (100 events) on one `queueflow ingest`
process, with the CPU time ingest and Valkey spend per event; beside the Node.js reference
when `node` is installed; and (not in --smoke) single events over two ingest processes, and
both loads with and without QUEUEFLOW_REDIS_WAIT_REPLICAS=1 against a replica of Valkey."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import load
from bench.context import STREAM, Bench, service_env
from bench.figures import CpuClock, Result, cpu_seconds, rss_mb
from bench.processes import running
from bench.report import summarize
from queueflow.embedded import free_port, start_valkey

REFERENCE = Path(__file__).resolve().parent / "reference"
REFERENCE_STREAM = "events_reference"


@dataclass(frozen=True)
class IngestResult(Result):
    OPTIONAL = frozenset({"ingest_single_2_processes", "ingest_replicated"})

    ingest_single_2_processes: dict[str, Any] | None  # None in --smoke
    ingest_replicated: dict[str, Any] | None  # None in --smoke
    load_generator: str
    ingest_single: dict[str, Any]  # report.summarize's figures
    ingest_batch: dict[str, Any]
    reference_single: dict[str, Any] | None  # None without node, and in --smoke


def run(bench: Bench) -> IngestResult:
    single, batch, ref = [], [], []
    with bench.service("ingest") as ingest, reference(bench) as ref_url:
        for _ in range(bench.args.runs):
            bench.settle(STREAM)
            single.append(with_cpu(bench, ingest.process, f"{ingest.url}/event", "single"))
            if ref_url:
                bench.settle(REFERENCE_STREAM)
                ref.append(load.http(f"{ref_url}/event", "single", bench.args.duration))
            bench.settle(STREAM)
            batch.append(with_cpu(bench, ingest.process, f"{ingest.url}/events", "batch"))
        rss = rss_mb(ingest.process)
        two = None if bench.args.smoke else two_processes(bench, ingest.url)
        replicated = None if bench.args.smoke else waiting_for_a_replica(bench, ingest.url)
    bench.redis.delete(STREAM, REFERENCE_STREAM)
    return IngestResult(
        ingest_single_2_processes=two,
        ingest_replicated=replicated,
        load_generator=single[0]["tool"],
        ingest_single=summarize(single),
        ingest_batch=summarize(batch, events_per_request=100),
        reference_single=summarize(ref) if ref else None,
        rss_mb={"ingest": rss},
    )


def with_cpu(bench: Bench, ingest: psutil.Process, url: str, kind: str) -> dict:
    """One load run and the CPU time ingest and Valkey spent per event accepted in it:
    what bounds the rate when both share this machine's cores with the load generator."""
    clock = CpuClock({"ingest": lambda: cpu_seconds(ingest), "valkey": bench.valkey_cpu})
    result = load.http(url, kind, bench.args.duration)
    events = result["requests_per_s"] * bench.args.duration * (100 if kind == "batch" else 1)
    result["cpu_us_per_event"] = clock.per_event(events)
    return result


def two_processes(bench: Bench, url: str) -> dict:
    """The same single-event load split over two ingest processes: what a second
    process per pod would buy (the process count per pod is chosen from this)."""
    runs = []
    with bench.service("ingest") as second:
        for _ in range(bench.args.runs):
            bench.settle(STREAM)
            urls = [f"{url}/event", f"{second.url}/event"]
            runs.append(load.http_split(urls, "single", bench.args.duration))
    return summarize(runs)


def waiting_for_a_replica(bench: Bench, url: str) -> dict:
    """What WAIT 1 after each append costs: a replica of the bench's Valkey on this machine,
    then single events and batches on `url` (not waiting) and on a second ingest process
    waiting for the replica, run by run in turn. The replica shares the two cores, so the
    primary's replication costs both alike; a replica on another machine adds its network
    round trip to each append's instead."""
    loads = [(f"{n}_{kind}", kind) for kind in ("single", "batch") for n in ("plain", "wait")]
    runs: dict[str, list[dict]] = {name: [] for name, _ in loads}
    with (
        tempfile.TemporaryDirectory() as folder,
        replica_of(bench, Path(folder)),
        bench.service("ingest", redis_wait_replicas=1) as waiting,
    ):
        for _ in range(bench.args.runs):
            for name, kind in loads:
                bench.settle(STREAM)
                target = waiting.url if name.startswith("wait") else url
                path = "/events" if kind == "batch" else "/event"
                runs[name].append(load.http(target + path, kind, bench.args.duration))
    return {
        name: summarize(runs[name], events_per_request=100 if kind == "batch" else 1)
        for name, kind in loads
    }


@contextlib.contextmanager
def replica_of(bench: Bench, folder: Path) -> Iterator[None]:
    """A Valkey replicating the bench's, in sync."""
    replica = start_valkey(folder, replica_of=bench.redis_url)
    try:
        yield
    finally:
        replica.stop()


@contextlib.contextmanager
def reference(bench: Bench) -> Iterator[str | None]:
    """reference/server.js on a free port, when node and npm are installed (not in --smoke)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if bench.args.smoke or not (node and npm):
        yield None
        return
    if not (REFERENCE / "node_modules").is_dir():
        install = [npm, "install", "--no-audit", "--no-fund", "--silent"]
        subprocess.run(install, cwd=REFERENCE, check=True)
    port = free_port()
    env = service_env(bench.settings(), PORT=str(port), STREAM=REFERENCE_STREAM)
    with running([node, "server.js"], env, ready=None, port=port, cwd=REFERENCE) as server:
        yield server.url
