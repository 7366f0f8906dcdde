"""Step `soak` (--soak seconds, 0: none): Redis memory and stream length while ingest and two
workers run at half the pipeline's maximum (so it needs `ingest` and `drain`); and step
`memory`: RSS of Valkey and PostgreSQL and Redis's used_memory at the end."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench import load
from bench.context import Bench
from bench.drain import DrainResult
from bench.figures import Result, rss_mb
from bench.freshness import half_max_rate
from bench.ingest import IngestResult


@dataclass(frozen=True)
class SoakResult(Result):
    NEST = "soak"

    seconds: int
    events_per_s: int
    # first/last minute's max and min, max, last
    redis_used_memory_mb: dict[str, float]
    stream_length: dict[str, int]  # max, last
    redis_used_memory_mb_max_per_5s: list[float]


@dataclass(frozen=True)
class MemoryResult(Result):
    redis_used_memory_mb: float


def run(bench: Bench, ingest: IngestResult, drain: DrainResult) -> SoakResult:
    """Ingest and two workers at that rate for --soak seconds, Redis memory and stream length
    sampled every second. Workers trim every second, so memory saws up and down; it is
    flat when the last minute's peak and floor match the first minute's."""
    rate = half_max_rate(ingest, drain)
    bench.reset()
    samples: list[tuple[float, int]] = []
    with (
        bench.service("ingest") as ingest_service,
        bench.service("worker", consumer="soak-a"),
        bench.service("worker", consumer="soak-b"),
        ThreadPoolExecutor(1) as pool,
    ):
        url = f"{ingest_service.url}/events"
        loading = pool.submit(load.steady, url, rate, bench.args.soak)
        while not loading.done():  # a sample a second, for as long as the load runs
            memory_mb = bench.redis.info("memory")["used_memory"] / 2**20
            samples.append((memory_mb, bench.stream.stats().length))
            time.sleep(1)
        loading.result()
    memory = [m for m, _ in samples]
    minute = min(60, len(memory) // 2)
    return SoakResult(
        seconds=bench.args.soak,
        events_per_s=round(rate),
        redis_used_memory_mb={
            "first_minute_max": round(max(memory[:minute]), 1),
            "last_minute_max": round(max(memory[-minute:]), 1),
            "first_minute_min": round(min(memory[:minute]), 1),
            "last_minute_min": round(min(memory[-minute:]), 1),
            "max": round(max(memory), 1),
            "last": round(memory[-1], 1),
        },
        stream_length={"max": max(n for _, n in samples), "last": samples[-1][1]},
        redis_used_memory_mb_max_per_5s=[
            round(max(memory[i : i + 5]), 1) for i in range(0, len(memory), 5)
        ],
    )


def memory(bench: Bench) -> MemoryResult:
    postgres = [bench.postgres, *bench.postgres.children()]
    return MemoryResult(
        redis_used_memory_mb=round(bench.redis.info("memory")["used_memory"] / 2**20, 1),
        rss_mb={
            "valkey": rss_mb(bench.valkey),
            "postgres_total": round(sum(rss_mb(p) for p in postgres), 1),
        },
    )
