"""`make bench`: QueueFlow's speed measured against its limits, on this machine, in one run.

Starts its own Valkey and PostgreSQL (from the wheels), then measures, each figure the
median of --runs runs: (a) the limits: raw XADD rate with and without pipelining, and the
worker's batch statement through asyncpg with pre-built batches; (b) `queueflow ingest`,
one process, single events and 100-event batches, beside the Node.js/Express reference when
`node` is installed; (c) the drain rate of one and of two workers from a preloaded backlog;
(d) freshness at half the measured maximum rate; (e) RSS of each process and Redis memory
through a soak. Prints a table and writes bench/results/<date>.json.
`--smoke` is the quick ratio check CI may run (bench/smoke_baseline.json).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.server
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil
import redis

from bench import load
from bench.report import check_smoke, freshness, median, ratios, summarize, table
from queueflow.core.events import encode_event
from queueflow.core.store import SAVE_BATCH, batch_document, stored_event
from queueflow.embedded import embedded_servers, free_port

HERE = Path(__file__).resolve().parent
STREAM, GROUP = "bench_events", "bench_workers"
TABLES = "events, daily_site_stats, daily_site_path_counts, daily_site_users"


class Bench:
    def __init__(
        self, args: argparse.Namespace, redis_url: str, database_url: str, pids: tuple[int, int]
    ) -> None:
        self.args = args
        self.redis_url, self.database_url = redis_url, database_url
        self.redis = redis.from_url(redis_url)
        self.valkey, self.postgres = (psutil.Process(pid) for pid in pids)
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "QUEUEFLOW_STREAM": STREAM,
            "QUEUEFLOW_GROUP": GROUP,
            "QUEUEFLOW_LOG_LEVEL": "warning",
            "QUEUEFLOW_BACKLOG_LIMIT": str(10**9),
        }
        self.results: dict = {"rss_mb": {}}

    # -- processes ---------------------------------------------------------------------
    @contextlib.contextmanager
    def service(
        self, command: str, quiet: bool = False, **env: str
    ) -> Iterator[tuple[str, psutil.Process]]:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "queueflow",
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL if quiet else None,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url, psutil.Process(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)

    def settle(self, *streams: str) -> None:
        """Delete the streams and compact the AOF, waiting until it is done: every load run
        starts from the same Redis, not inside a rewrite the previous run's writes set off
        (a fork and a second process on the same two cores)."""
        self.redis.delete(*streams)
        if self.redis.config_get("appendonly")["appendonly"] != "yes":
            return
        with contextlib.suppress(redis.ResponseError):  # "already in progress"
            self.redis.bgrewriteaof()
        while True:
            info = self.redis.info("persistence")
            if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
                return
            time.sleep(0.05)

    def reset(self) -> None:
        """An empty stream and empty tables; PostgreSQL writes out what the last step dirtied
        now rather than from its checkpointer during the next step's load."""
        self.settle(STREAM)
        asyncio.run(self._sql(f"TRUNCATE {TABLES}"))
        asyncio.run(self._sql("CHECKPOINT"))

    async def _sql(self, statement: str) -> object:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    # -- (a) limits --------------------------------------------------------------------
    def xadd_limits(self) -> None:
        port = self.redis_url.rsplit(":", 1)[1].split("/")[0]
        payload = encode_event(load.events(1)[0])
        rates: dict[str, list[float]] = {"unpipelined": [], "pipelined": []}
        tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
        for _ in range(self.args.runs):
            for name, depth in (("unpipelined", 1), ("pipelined", 16)):
                self.settle("bench_xadd")
                if tool:
                    rates[name].append(redis_benchmark(tool, port, payload, depth))
                else:
                    rates[name].append(load.xadd_rate(self.redis_url, payload, depth))
        self.redis.delete("bench_xadd")
        self.results["xadd_per_s"] = {k: median(v) for k, v in rates.items()}
        self.results["xadd_tool"] = Path(tool).name if tool else "python raw socket (1 conn)"

    def sql_limit(self) -> None:
        """The worker's own statement, 500-event batches (its default batch size) built
        beforehand: PostgreSQL's share, with no stream, decoding or encoding around it."""
        received_ms = int(time.time() * 1000)
        events = [stored_event(encode_event(e), received_ms) for e in load.events(150_000)]
        documents = [batch_document(events[i : i + 500]) for i in range(0, len(events), 500)]
        rates = []
        for _ in range(self.args.runs):
            self.reset()
            rates.append(asyncio.run(sql_rate(self.database_url, documents, self.args.duration)))
        self.reset()
        self.results["batch_sql_events_per_s"] = median(rates)

    # -- (b) ingest --------------------------------------------------------------------
    def ingest(self) -> None:
        reference = self.reference()
        single, batch, ref = [], [], []
        with self.service("ingest") as (url, proc), reference as ref_url:
            for _ in range(self.args.runs):
                self.settle(STREAM)
                single.append(self.with_cpu(proc, f"{url}/event", "single"))
                if ref_url:
                    self.settle("events_reference")
                    ref.append(load.http(f"{ref_url}/event", "single", self.args.duration))
                self.settle(STREAM)
                batch.append(self.with_cpu(proc, f"{url}/events", "batch"))
            self.results["rss_mb"]["ingest"] = rss_mb(proc)
            if not self.args.smoke:
                self.results["ingest_single_2_processes"] = self.two_processes(url)
        self.redis.delete(STREAM, "events_reference")
        self.results["load_generator"] = single[0]["tool"]
        self.results["ingest_single"] = summarize(single)
        self.results["ingest_batch"] = summarize(batch, events_per_request=100)
        self.results["reference_single"] = summarize(ref) if ref else None

    def with_cpu(self, ingest: psutil.Process, url: str, kind: str) -> dict:
        """One load run and the CPU time ingest and Valkey spent per event accepted in it:
        what bounds the rate when both share this machine's cores with the load generator."""
        clock = CpuClock({"ingest": lambda: cpu_seconds(ingest), "valkey": self.valkey_cpu})
        result = load.http(url, kind, self.args.duration)
        events = result["requests_per_s"] * self.args.duration * (100 if kind == "batch" else 1)
        result["cpu_us_per_event"] = clock.per_event(events)
        return result

    def two_processes(self, url: str) -> dict:
        """The same single-event load split over two ingest processes: what a second
        process per pod would buy (the process count per pod is chosen from this)."""
        runs = []
        with self.service("ingest") as (second_url, _):
            for _ in range(self.args.runs):
                self.settle(STREAM)
                runs.append(
                    load.http_split(
                        [f"{url}/event", f"{second_url}/event"], "single", self.args.duration
                    )
                )
        return summarize(runs)

    def instrumentation(self) -> None:
        """Single-event ingest bare (no access log, no tracing), as deployed (access log on),
        and with tracing exported over OTLP/HTTP (every request, and 1% sampled), side by
        side in alternating runs."""
        variants = {
            "bare": {"QUEUEFLOW_ACCESS_LOG": "false"},
            "access_log": {"QUEUEFLOW_LOG_LEVEL": "info"},
            "access_log_and_tracing": {"QUEUEFLOW_LOG_LEVEL": "info"},
            "access_log_and_tracing_1pct": {
                "QUEUEFLOW_LOG_LEVEL": "info",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
            },
        }
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        with otlp_sink() as endpoint:
            for name in ("access_log_and_tracing", "access_log_and_tracing_1pct"):
                variants[name]["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
            with contextlib.ExitStack() as stack:
                urls = {
                    name: stack.enter_context(self.service("ingest", quiet=True, **env))[0]
                    for name, env in variants.items()
                }
                for _ in range(self.args.runs):
                    for name, url in urls.items():
                        self.settle(STREAM)
                        # Half-length runs: four variants must fit the bench's 10 minutes.
                        seconds = max(1, self.args.duration // 2)
                        runs[name].append(load.http(f"{url}/event", "single", seconds))
        self.redis.delete(STREAM)
        self.results["instrumentation"] = {name: summarize(r) for name, r in runs.items()}

    @contextlib.contextmanager
    def reference(self) -> Iterator[str | None]:
        node, npm = shutil.which("node"), shutil.which("npm")
        folder = HERE / "reference"
        if self.args.smoke or not (node and npm):
            yield None
            return
        if not (folder / "node_modules").is_dir():
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=folder, check=True
            )
        port = free_port()
        proc = subprocess.Popen(
            [node, "server.js"],
            cwd=folder,
            env={**self.env, "PORT": str(port), "STREAM": "events_reference"},
        )
        try:
            wait_port(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)

    # -- (c) drain ---------------------------------------------------------------------
    def drain(self) -> None:
        for workers in (1, 2):
            runs = []
            for _ in range(self.args.runs):
                self.reset()
                load.preload(self.redis_url, STREAM, self.args.backlog)
                runs.append(self.drain_once(workers))
            self.results[f"drain_{workers}_worker_events_per_s"] = median([r for r, _, _ in runs])
            self.results[f"drain_{workers}_worker_cpu_us_per_event"] = {
                name: median([cpu[name] for _, cpu, _ in runs]) for name in runs[0][1]
            }
            self.results[f"drain_{workers}_worker_postgres_backends"] = {
                state: median([states.get(state, 0) for _, _, states in runs])
                for state in {state for _, _, states in runs for state in states}
            }
        self.reset()

    def drain_once(self, workers: int) -> tuple[float, dict[str, float], dict[str, float]]:
        """Events/s over the window in which all the workers run (what was drained while the
        later ones started is not counted), the CPU time each side spent per event, and what
        PostgreSQL's backends were doing meanwhile."""
        with contextlib.ExitStack() as stack:
            procs = [
                stack.enter_context(self.service("worker", QUEUEFLOW_CONSUMER=f"w{i}"))[1]
                for i in range(workers)
            ]
            remaining = self.backlog()
            clock = CpuClock(
                {
                    "workers": lambda: sum(map(cpu_seconds, procs)),
                    "postgres": self.postgres_cpu,
                    "valkey": self.valkey_cpu,
                }
            )
            started, done = time.monotonic(), threading.Event()
            with ThreadPoolExecutor(1) as pool:
                sampling = pool.submit(backend_states, self.database_url, done)
                while self.backlog():
                    time.sleep(0.02)
                elapsed = time.monotonic() - started
                done.set()
                states = sampling.result()
            spent = clock.per_event(remaining)
            self.results["rss_mb"]["worker"] = rss_mb(procs[0])
        return remaining / elapsed, spent, states

    def postgres_cpu(self) -> float:
        """CPU seconds so far of PostgreSQL: all its processes alive now."""
        return sum(map(cpu_seconds, [self.postgres, *self.postgres.children()]))

    def valkey_cpu(self) -> float:
        return cpu_seconds(self.valkey)

    def backlog(self) -> int:
        """Entries the group has not finished: undelivered plus pending."""
        groups = self.redis.xinfo_groups(STREAM)
        if not groups:
            return self.redis.xlen(STREAM)
        return groups[0]["lag"] + groups[0]["pending"]

    # -- (d) freshness, (e) soak ---------------------------------------------------------
    def freshness_and_soak(self) -> None:
        rate = 0.5 * min(
            self.results["ingest_batch"]["events_per_s"],
            self.results["drain_1_worker_events_per_s"],
        )
        self.reset()
        with (
            self.service("ingest") as (ingest_url, _),
            self.service("worker", QUEUEFLOW_CONSUMER="fresh") as (worker_url, _),
        ):
            load.steady(f"{ingest_url}/events", rate, self.args.duration)
            time.sleep(1)
            quantiles = freshness(worker_url)
        self.results["freshness_at_events_per_s"] = round(rate)
        self.results["freshness_s"] = quantiles
        if self.args.soak:
            self.soak(rate)

    def soak(self, rate: float) -> None:
        """Ingest and two workers at `rate` for --soak seconds, Redis memory and stream length
        sampled every second. Workers trim every second, so memory saws up and down; it is
        flat when the last minute's peak and floor match the first minute's."""
        self.reset()
        samples: list[tuple[float, int]] = []
        with (
            self.service("ingest") as (ingest_url, _),
            self.service("worker", QUEUEFLOW_CONSUMER="soak-a"),
            self.service("worker", QUEUEFLOW_CONSUMER="soak-b"),
            ThreadPoolExecutor(1) as pool,
        ):
            loading = pool.submit(load.steady, f"{ingest_url}/events", rate, self.args.soak)
            while not loading.done():
                memory_mb = self.redis.info("memory")["used_memory"] / 2**20
                samples.append((memory_mb, self.redis.xlen(STREAM)))
                time.sleep(1)
            loading.result()
        memory = [m for m, _ in samples]
        minute = min(60, len(memory) // 2)
        self.results["soak"] = {
            "seconds": self.args.soak,
            "events_per_s": round(rate),
            "redis_used_memory_mb": {
                "first_minute_max": round(max(memory[:minute]), 1),
                "last_minute_max": round(max(memory[-minute:]), 1),
                "first_minute_min": round(min(memory[:minute]), 1),
                "last_minute_min": round(min(memory[-minute:]), 1),
                "max": round(max(memory), 1),
                "last": round(memory[-1], 1),
            },
            "stream_length": {"max": max(n for _, n in samples), "last": samples[-1][1]},
            "redis_used_memory_mb_max_per_5s": [
                round(max(memory[i : i + 5]), 1) for i in range(0, len(memory), 5)
            ],
        }

    def server_memory(self) -> None:
        self.results["rss_mb"]["valkey"] = rss_mb(self.valkey)
        self.results["rss_mb"]["postgres_total"] = round(
            sum(rss_mb(p) for p in [self.postgres, *self.postgres.children()]), 1
        )
        self.results["redis_used_memory_mb"] = round(
            self.redis.info("memory")["used_memory"] / 2**20, 1
        )


# -- helpers -------------------------------------------------------------------------------
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


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


# What each PostgreSQL client backend is doing, in a word: running on (or waiting for) a core,
# idle while its worker prepares the next batch, or waiting for a lock, for I/O, ...
BACKEND_STATE = """
SELECT CASE WHEN state LIKE 'idle%' THEN 'idle' WHEN wait_event_type IS NULL THEN 'running'
            ELSE lower(wait_event_type) END
FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


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


class CpuClock:
    """CPU seconds each named side spends from now until per_event() is asked."""

    def __init__(self, sides: dict[str, Callable[[], float]]) -> None:
        self.sides = sides
        self.before = {name: cpu() for name, cpu in sides.items()}

    def per_event(self, events: float) -> dict[str, float]:
        """Microseconds of CPU per event, by side."""
        return {
            name: round(1e6 * (cpu() - self.before[name]) / events, 1)
            for name, cpu in self.sides.items()
        }


def cpu_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:  # a PostgreSQL child that exited while being counted
        return 0.0
    return times.user + times.system


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / 2**20, 1)


def redis_benchmark(tool: str, port: str, payload: bytes, depth: int) -> float:
    out = subprocess.run(
        [
            tool,
            "-p",
            port,
            "-n",
            "100000",
            "-c",
            "50",
            "-P",
            str(depth),
            "-q",
            "XADD",
            "bench_xadd",
            "*",
            "event",
            payload.decode(),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "XADD bench_xadd * event ...: 61349.69 requests per second, p50=0.391 msec"
    return float(out.rsplit(":", 1)[1].split("requests per second")[0].split()[-1])


async def sql_rate(database_url: str, documents: list[str], seconds: float) -> float:
    """Events/s of SAVE_BATCH on one connection, one 500-event document after another."""
    conn = await asyncpg.connect(database_url)
    try:
        done, started = 0, time.monotonic()
        for document in documents:
            await conn.fetchval(SAVE_BATCH, document)
            done += 500
            if time.monotonic() - started > seconds:
                break
        return done / (time.monotonic() - started)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6, help="seconds per load run")
    parser.add_argument("--backlog", type=int, default=200_000, help="events preloaded to drain")
    parser.add_argument("--soak", type=int, default=300, help="soak seconds (0: none)")
    parser.add_argument("--smoke", action="store_true", help="quick ratio check, ~1 minute")
    parser.add_argument("--only", help="run one step (e.g. instrumentation), print its JSON")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.backlog, args.soak = 1, 3, 40_000, 0
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="queueflow-bench-") as tmp,
        embedded_servers(Path(tmp)) as (valkey, postgres),
    ):
        subprocess.run(
            [sys.executable, "-m", "queueflow", "migrate"],
            check=True,
            env={**os.environ, "DATABASE_URL": postgres.url, "QUEUEFLOW_LOG_LEVEL": "warning"},
        )
        bench = Bench(args, valkey.url, postgres.url, (valkey.process.pid, postgres.process.pid))
        steps: list[Callable[[], None]] = [
            bench.xadd_limits,
            bench.sql_limit,
            bench.ingest,
            bench.drain,
            bench.freshness_and_soak,
        ]
        if not args.smoke:
            steps.insert(3, bench.instrumentation)
        if args.only:
            getattr(bench, args.only)()
            print(json.dumps(bench.results, indent=2))
            return 0
        for step in steps:
            print(f"[bench] {step.__name__} ...", flush=True)
            step()
        bench.server_memory()
        results = bench.results
    results["ratios"] = ratios(results)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "runs": args.runs,
    }
    results["seconds"] = round(time.monotonic() - started)
    print(table(results))
    if args.smoke:
        return check_smoke(results)
    out = HERE / "results" / f"{datetime.now(UTC):%Y-%m-%d}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
