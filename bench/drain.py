"""Step `drain`: events/s of 1 and of 2 `queueflow worker` processes from a preloaded
backlog (--backlog), the CPU time of workers, PostgreSQL and Valkey per event, and what
PostgreSQL's backends were doing meanwhile."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench import load
from bench.context import STREAM, Bench
from bench.figures import CpuClock, Result, cpu_seconds, rss_mb
from bench.processes import wait_until
from bench.report import median

# What each PostgreSQL client backend is doing, in a word: running on (or waiting for) a core,
# idle while its worker prepares the next batch, or waiting for a lock, for I/O, ...
BACKEND_STATE = """
SELECT CASE WHEN state LIKE 'idle%' THEN 'idle' WHEN wait_event_type IS NULL THEN 'running'
            ELSE lower(wait_event_type) END
FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


@dataclass(frozen=True)
class DrainResult(Result):
    drain_1_worker_events_per_s: float
    drain_1_worker_cpu_us_per_event: dict[str, float]  # workers, postgres, valkey
    drain_1_worker_postgres_backends: dict[str, float]  # mean backends by state
    drain_2_worker_events_per_s: float
    drain_2_worker_cpu_us_per_event: dict[str, float]
    drain_2_worker_postgres_backends: dict[str, float]


def run(bench: Bench) -> DrainResult:
    figures: dict[str, Any] = {}
    for workers in (1, 2):
        runs = []
        for _ in range(bench.args.runs):
            bench.reset()
            load.preload(bench.redis_url, STREAM, bench.args.backlog)
            runs.append(drain_once(bench, workers))
        figures[f"drain_{workers}_worker_events_per_s"] = median([r for r, _, _, _ in runs])
        figures[f"drain_{workers}_worker_cpu_us_per_event"] = {
            name: median([cpu[name] for _, cpu, _, _ in runs]) for name in runs[0][1]
        }
        figures[f"drain_{workers}_worker_postgres_backends"] = {
            state: median([states.get(state, 0) for _, _, states, _ in runs])
            for state in {state for _, _, states, _ in runs for state in states}
        }
    bench.reset()
    return DrainResult(**figures, rss_mb={"worker": runs[-1][3]})


def drain_once(bench: Bench, workers: int) -> tuple[float, dict[str, float], dict, float]:
    """Events/s over the window in which all the workers run (what was drained while the
    later ones started is not counted), the CPU time each side spent per event, what
    PostgreSQL's backends were doing meanwhile, and the first worker's RSS."""
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(bench.service("worker", consumer=f"w{i}")).process
            for i in range(workers)
        ]
        remaining = bench.stream.backlog()
        clock = CpuClock(
            {
                "workers": lambda: sum(map(cpu_seconds, procs)),
                "postgres": bench.postgres_cpu,
                "valkey": bench.valkey_cpu,
            }
        )
        started, done = time.monotonic(), threading.Event()
        with ThreadPoolExecutor(1) as pool:
            sampling = pool.submit(backend_states, bench.database_url, done)
            try:
                wait_until(lambda: bench.stream.backlog() == 0, 600, interval_s=0.02)
                elapsed = time.monotonic() - started
            finally:
                done.set()
            states = sampling.result()
        spent = clock.per_event(remaining)
        rss = rss_mb(procs[0])
    return remaining / elapsed, spent, states, rss


def backend_states(database_url: str, done: threading.Event) -> dict[str, float]:
    """How many of PostgreSQL's client backends were in each state on average (sampled every
    10 ms until `done`): whether workers wait on each other (lock) or on the machine."""

    async def sample() -> tuple[collections.Counter[str], int]:
        counts: collections.Counter[str] = collections.Counter()
        rounds = 0
        conn = await asyncpg.connect(database_url)
        try:
            while not done.is_set():
                counts.update(row[0] for row in await conn.fetch(BACKEND_STATE))
                rounds += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()
        return counts, rounds

    counts, rounds = asyncio.run(sample())
    return {state: round(n / max(rounds, 1), 2) for state, n in counts.most_common()}
