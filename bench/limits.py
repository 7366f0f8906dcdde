"""Step `limits`: what QueueFlow is measured against. The raw XADD rate, unpipelined and
16-deep pipelined, and the worker's own batch statement with the batches built beforehand."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec

from bench import load
from bench.context import Bench
from bench.figures import Result
from bench.report import median
from queueflow.core.events import encode_event
from queueflow.core.store import SAVE_BATCH, batch_document, stored_event

XADD_STREAM = "bench_xadd"


@dataclass(frozen=True)
class LimitsResult(Result):
    xadd_per_s: dict[str, float]  # "unpipelined", "pipelined"
    xadd_tool: str
    batch_sql_events_per_s: float


def run(bench: Bench) -> LimitsResult:
    xadd_per_s, tool = xadd_limits(bench)
    return LimitsResult(xadd_per_s, tool, sql_limit(bench))


def xadd_limits(bench: Bench) -> tuple[dict[str, float], str]:
    port = bench.redis_url.rsplit(":", 1)[1].split("/")[0]
    payload = encode_event(load.events(1)[0])
    rates: dict[str, list[float]] = {"unpipelined": [], "pipelined": []}
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    for _ in range(bench.args.runs):
        for name, depth in (("unpipelined", 1), ("pipelined", 16)):
            bench.settle(XADD_STREAM)
            if tool:
                rates[name].append(redis_benchmark(tool, port, payload, depth))
            else:
                rates[name].append(load.xadd_rate(bench.redis_url, payload, depth))
    bench.redis.delete(XADD_STREAM)
    return (
        {k: median(v) for k, v in rates.items()},
        Path(tool).name if tool else "python raw socket (1 conn)",
    )


def batch_documents(count: int = 150_000, seed: int = 1, random_ids: bool = False) -> list[str]:
    """`count` events of the bench's mix as the worker's 500-event batch documents; with
    random_ids, each event id a random UUID (as a tracker's are) instead of a UUIDv7."""
    received_ms = int(time.time() * 1000)
    mix = load.events(count, seed)
    if random_ids:
        mix = [msgspec.structs.replace(e, event_id=str(uuid.uuid4())) for e in mix]
    events = [stored_event(encode_event(e), received_ms) for e in mix]
    return [batch_document(events[i : i + 500]) for i in range(0, len(events), 500)]


def sql_limit(bench: Bench) -> float:
    """The worker's own statement, 500-event batches (its default batch size) built
    beforehand: PostgreSQL's share, with no stream, decoding or encoding around it."""
    documents = batch_documents()
    rates = []
    for _ in range(bench.args.runs):
        bench.reset()
        rates.append(asyncio.run(sql_rate(bench.database_url, documents, bench.args.duration)))
    bench.reset()
    return median(rates)


def redis_benchmark(tool: str, port: str, payload: bytes, depth: int) -> float:
    command = [tool, "-p", port, "-n", "100000", "-c", "50", "-P", str(depth), "-q"]
    command += ["XADD", XADD_STREAM, "*", "event", payload.decode()]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
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
