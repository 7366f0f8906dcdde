"""The bench's arithmetic and presentation: medians, quantiles from a histogram, the ratios
the targets are stated in, the printed table and the smoke check."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def freshness(worker_url: str) -> dict[str, float]:
    """p50/p95 from the worker's freshness histogram (linear within a bucket)."""
    buckets = []
    for line in httpx.get(f"{worker_url}/metrics").text.splitlines():
        if line.startswith("queueflow_worker_event_freshness_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]

    def quantile(q: float) -> float:
        previous_bound, previous_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= q * total:
                if bound == float("inf"):
                    return previous_bound
                share = (q * total - previous_count) / max(count - previous_count, 1)
                return round(previous_bound + share * (bound - previous_bound), 4)
            previous_bound, previous_count = bound, count
        return previous_bound

    return {"p50": quantile(0.5), "p95": quantile(0.95), "events": total}


def summarize(runs: list[dict], events_per_request: int = 1) -> dict:
    summary = {
        "requests_per_s": median([r["requests_per_s"] for r in runs]),
        "events_per_s": median([r["requests_per_s"] * events_per_request for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "p99_ms_runs": [r["p99_ms"] for r in runs],
        "errors": sum(r["errors"] for r in runs),
    }
    if "cpu_us_per_event" in runs[0]:
        summary["cpu_us_per_event"] = {
            name: median([r["cpu_us_per_event"][name] for r in runs])
            for name in runs[0]["cpu_us_per_event"]
        }
    return summary


def ratios(r: dict) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    ref = r.get("reference_single") or {}
    two = r.get("ingest_single_2_processes") or {}
    inst = r.get("instrumentation") or {}
    wait = r.get("ingest_replicated") or {}
    soak = (r.get("soak") or {}).get("redis_used_memory_mb", {})
    return {
        "single_vs_reference": ratio(
            r["ingest_single"]["requests_per_s"], ref.get("requests_per_s")
        ),
        "single_p99_reference_over_ours": ratio(ref.get("p99_ms"), r["ingest_single"]["p99_ms"]),
        "single_vs_unpipelined_xadd": ratio(
            r["ingest_single"]["requests_per_s"], r["xadd_per_s"]["unpipelined"]
        ),
        "single_2_processes_vs_1": ratio(
            two.get("requests_per_s"), r["ingest_single"]["requests_per_s"]
        ),
        "access_log_vs_bare": ratio(
            inst.get("access_log", {}).get("requests_per_s"),
            inst.get("bare", {}).get("requests_per_s"),
        ),
        "access_log_and_tracing_vs_bare": ratio(
            inst.get("access_log_and_tracing", {}).get("requests_per_s"),
            inst.get("bare", {}).get("requests_per_s"),
        ),
        **{
            f"waiting_for_a_replica_vs_not_{kind}": ratio(
                (wait.get(f"wait_{kind}") or {}).get("events_per_s"),
                (wait.get(f"plain_{kind}") or {}).get("events_per_s"),
            )
            for kind in ("single", "batch")
        },
        "batch_events_vs_pipelined_xadd": ratio(
            r["ingest_batch"]["events_per_s"], r["xadd_per_s"]["pipelined"]
        ),
        "one_worker_vs_sql_limit": ratio(
            r["drain_1_worker_events_per_s"], r["batch_sql_events_per_s"]
        ),
        "two_workers_vs_one": ratio(
            r["drain_2_worker_events_per_s"], r["drain_1_worker_events_per_s"]
        ),
        # The floor (what trimming leaves) is where a leak would show; peaks follow momentary lag.
        "soak_memory_floor_last_vs_first_minute": ratio(
            soak.get("last_minute_min"), soak.get("first_minute_min")
        ),
    }


def _replicated(figures: dict) -> str:
    """Not waiting / waiting, single then batches, and the non-2xx answers among them (wrk
    counts those in its rate)."""
    runs = [figures[f"{mode}_{kind}"] for kind in ("single", "batch") for mode in ("plain", "wait")]
    rates = [f"{run['events_per_s']:,.0f}" for run in runs]
    errors = "/".join(str(run["errors"]) for run in runs)
    return f"{rates[0]} / {rates[1]}; {rates[2]} / {rates[3]}; errors {errors}"


def table(r: dict) -> str:
    rows = [
        (
            "raw XADD, unpipelined / pipelined (ops/s)",
            f"{r['xadd_per_s']['unpipelined']:,.0f} / {r['xadd_per_s']['pipelined']:,.0f}",
        ),
        ("batch SQL limit (events/s)", f"{r['batch_sql_events_per_s']:,.0f}"),
        ("POST /event, 1 process (req/s, p50/p99 ms)", _http(r["ingest_single"])),
        (
            "POST /event, 2 processes, same 50 connections",
            _http(r["ingest_single_2_processes"])
            if r.get("ingest_single_2_processes")
            else "not measured (smoke)",
        ),
        (
            "Node.js reference POST /event",
            _http(r["reference_single"]) if r.get("reference_single") else "not measured (no node)",
        ),
        (
            "POST /events x100, 1 process (events/s, p50/p99 ms)",
            f"{r['ingest_batch']['events_per_s']:,.0f}  {r['ingest_batch']['p50_ms']}/"
            f"{r['ingest_batch']['p99_ms']}",
        ),
        (
            "with a replica: POST /event; /events x100, not waiting / WAIT 1 (events/s)",
            _replicated(r["ingest_replicated"])
            if r.get("ingest_replicated")
            else "not measured (smoke)",
        ),
        (
            "CPU per event, single / batch (us): ingest; Valkey",
            f"{_cpu(r, 'ingest')}; {_cpu(r, 'valkey')}",
        ),
        (
            "drain, 1 worker / 2 workers (events/s)",
            f"{r['drain_1_worker_events_per_s']:,.0f} / {r['drain_2_worker_events_per_s']:,.0f}",
        ),
        *(
            (
                f"CPU per event drained, {n} worker{'s' * (n > 1)} (us)",
                ", ".join(f"{k} {v}" for k, v in r[f"drain_{n}_worker_cpu_us_per_event"].items()),
            )
            for n in (1, 2)
        ),
        *(
            (
                f"PostgreSQL backends by state, {n} worker{'s' * (n > 1)} (mean)",
                ", ".join(f"{k} {v}" for k, v in r[f"drain_{n}_worker_postgres_backends"].items()),
            )
            for n in (1, 2)
        ),
        (
            f"freshness at {r['freshness_at_events_per_s']:,} events/s (p50/p95 s)",
            f"{r['freshness_s']['p50']} / {r['freshness_s']['p95']}",
        ),
        *(
            (f"POST /event, {name.replace('_', ' ')}", _http(figures))
            for name, figures in (r.get("instrumentation") or {}).items()
        ),
        ("RSS MB", ", ".join(f"{k} {v}" for k, v in r["rss_mb"].items())),
    ]
    if r.get("soak"):
        s, m = r["soak"], r["soak"]["redis_used_memory_mb"]
        rows.append(
            (
                f"soak {s['seconds']} s at {s['events_per_s']:,} events/s",
                f"Redis MB first/last minute: peak {m['first_minute_max']}/"
                f"{m['last_minute_max']}, floor {m['first_minute_min']}/{m['last_minute_min']}; "
                f"stream max {s['stream_length']['max']:,}",
            )
        )
    if r.get("reporting"):
        rep = r["reporting"]
        rows.append(
            (
                f"reporting data: {rep['events']:,} events, built in (s)",
                ", ".join(f"{k} {v}" for k, v in rep["build_s"].items()),
            )
        )
        rows += [
            (
                f"GET {route} (p50/p99 ms)",
                ", ".join(f"{site} {f['p50']}/{f['p99']}" for site, f in sites.items()),
            )
            for route, sites in rep["latency_ms"].items()
        ]
        rows.append(
            (
                "storage per million events (MB)",
                ", ".join(f"{k} {v}" for k, v in rep["storage_mb_per_million_events"].items()),
            )
        )
    if r.get("sustained"):
        sus = r["sustained"]
        rows += [
            (
                f"batch statement with {sus['stored_events']:,} stored events (events/s)",
                f"{sus['filled_events_per_s']:,} against {sus['empty_events_per_s']:,} empty "
                f"({sus['filled_vs_empty']}x); random ids {sus['random_filled_events_per_s']:,}"
                f" against {sus['random_empty_events_per_s']:,} ({sus['random_filled_vs_empty']}x)",
            ),
            (
                "stored events' sizes (MB)",
                ", ".join(f"{k} {v}" for k, v in sus["sizes_mb"].items()),
            ),
            (
                "retention of one day (s)",
                f"{sus['retention_day_s']} for {sus['retention_day_events']:,} events",
            ),
        ]
    rows += [(f"ratio {k}", "-" if v is None else f"{v}") for k, v in r["ratios"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cpu(r: dict, process: str) -> str:
    return " / ".join(
        str(r[step].get("cpu_us_per_event", {}).get(process, "-"))
        for step in ("ingest_single", "ingest_batch")
    )


def _http(s: dict) -> str:
    return f"{s['requests_per_s']:,.0f}  {s['p50_ms']}/{s['p99_ms']}"


def check_smoke(r: dict) -> int:
    """Fail on a 2x slowdown, judged by ratios measured in this run, never by absolute time."""
    baseline = json.loads((HERE / "smoke_baseline.json").read_text())
    failed = 0
    for name, expected in baseline.items():
        got = r["ratios"].get(name)
        ok = got is not None and got >= expected / 2
        failed += not ok
        print(
            f"smoke {name}: {got} (baseline {expected}, floor {expected / 2:.2f}) "
            f"{'ok' if ok else 'SLOWER'}"
        )
    return 1 if failed else 0
