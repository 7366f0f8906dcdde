"""`make bench`: QueueFlow's speed measured against its limits, on this machine, in one run.

Starts its own Valkey and PostgreSQL (from the wheels), then runs the steps, each figure the
median of --runs runs: limits (raw XADD, the worker's batch statement), ingest (single
events, 100-event batches, two processes, the Node.js reference), instrumentation, drain
(one and two workers), freshness and soak (at half the measured maximum rate), memory.
Prints a table and writes bench/results/<date>.json. `--smoke` is the quick ratio check
(bench/smoke_baseline.json); `--only` runs some steps and prints their JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import drain, freshness, ingest, instrumentation, limits, reporting, soak, sustained
from bench.context import Bench
from bench.figures import Result
from bench.report import check_smoke, ratios, table
from queueflow.embedded import embedded_servers

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Step:
    run: Callable[..., Result]  # run(bench, **{dependency: its result})
    result: type[Result]
    needs: tuple[str, ...] = ()  # steps whose results run() takes, by these names
    smoke: bool = True  # part of --smoke


# In the order they run; a step comes after the steps it needs.
STEPS = {
    "limits": Step(limits.run, limits.LimitsResult),
    "ingest": Step(ingest.run, ingest.IngestResult),
    "instrumentation": Step(
        instrumentation.run, instrumentation.InstrumentationResult, smoke=False
    ),
    "drain": Step(drain.run, drain.DrainResult),
    "freshness": Step(freshness.run, freshness.FreshnessResult, needs=("ingest", "drain")),
    "soak": Step(soak.run, soak.SoakResult, needs=("ingest", "drain")),
    "reporting": Step(reporting.run, reporting.ReportingResult),
    "sustained": Step(sustained.run, sustained.SustainedResult),
    "memory": Step(soak.memory, soak.MemoryResult),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6, help="seconds per load run")
    parser.add_argument("--backlog", type=int, default=200_000, help="events preloaded to drain")
    parser.add_argument("--soak", type=int, default=300, help="soak seconds (0: none)")
    parser.add_argument(
        "--reporting-days", type=int, default=31, help="days of data the reporting step builds"
    )
    parser.add_argument(
        "--reporting-events", type=int, default=1_000_000, help="events a day in that data"
    )
    parser.add_argument(
        "--reporting-requests", type=int, default=100, help="requests per route and site"
    )
    parser.add_argument(
        "--sustained-events",
        type=int,
        default=50_000_000,
        help="raw events stored before the sustained step's second measurement",
    )
    parser.add_argument("--smoke", action="store_true", help="quick ratio check, ~1 minute")
    parser.add_argument(
        "--only",
        metavar="STEP[,STEP]",
        help=f"run these steps ({', '.join(STEPS)}), print their JSON, write nothing",
    )
    parser.add_argument(
        "--results",
        type=Path,
        metavar="FILE",
        help="with --only: where the figures of needed steps left out come from "
        "(default: the newest bench/results/*.json)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.backlog, args.soak = 1, 3, 40_000, 0
        args.reporting_days, args.reporting_events, args.reporting_requests = 3, 20_000, 20
        args.sustained_events = 200_000
    return args


def selected(args: argparse.Namespace) -> list[str]:
    """The steps to run, in STEPS' order; SystemExit with the reason when --only is wrong."""
    if not args.only:
        wanted = {n for n, s in STEPS.items() if s.smoke or not args.smoke}
        return [n for n in STEPS if n in wanted and (n != "soak" or args.soak > 0)]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        sys.exit(f"--only: no step {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    if "soak" in names and not args.soak:
        sys.exit("--only soak: --soak is 0 (as in --smoke), so the soak has nothing to run")
    return [n for n in STEPS if n in names]


def given(names: list[str], args: argparse.Namespace) -> dict[str, Result]:
    """The results of steps the selected ones need but that are not selected, from a results
    file; SystemExit saying what to do instead when there is none or it lacks a figure."""
    missing = [n for n in STEPS if n not in names and any(n in STEPS[s].needs for s in names)]
    if not missing:
        return {}
    newest = max((HERE / "results").glob("*.json"), default=None)
    path = args.results or (newest and Path(os.path.relpath(newest)))
    needers = [s for s in names if set(STEPS[s].needs) & set(missing)]
    advice = (
        f"--only {','.join(needers)} needs the figures of {' and '.join(missing)}: run "
        f"{'them' if len(missing) > 1 else 'it'} too (--only "
        f"{','.join(n for n in STEPS if n in names or n in missing)}) or name a results file "
        "that has them (--results FILE)"
    )
    if path is None:
        sys.exit(f"{advice}; bench/results has no results file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"{advice}; cannot read {path}: {exc}")
    try:
        results = {n: STEPS[n].result.from_json(data) for n in missing}
    except (KeyError, TypeError, AttributeError) as exc:
        sys.exit(f"{advice}; {path} has no figure {exc}")
    print(f"[bench] {' and '.join(missing)}: figures from {path}", file=sys.stderr, flush=True)
    return results


def merged(results: list[Result]) -> dict:
    """The results JSON's figures: each step's keys, their RSS figures under "rss_mb"."""
    out: dict = {"rss_mb": {}}
    for result in results:
        out["rss_mb"].update(result.rss_mb)
        out.update(result.to_json())
    return out


def main() -> int:
    args = parse_args()
    names = selected(args)
    results = given(names, args) if args.only else {}
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="queueflow-bench-") as tmp,
        embedded_servers(Path(tmp)) as (valkey, postgres),
    ):
        bench = Bench(args, valkey, postgres)
        try:
            bench.migrate()
            for name in names:
                print(f"[bench] {name} ...", flush=True)
                step = STEPS[name]
                results[name] = step.run(bench, **{n: results[n] for n in step.needs})
        finally:
            bench.close()
    figures = merged([results[n] for n in names])
    if args.only:
        print(json.dumps(figures, indent=2))
        return 0
    figures["ratios"] = ratios(figures)
    figures["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "runs": args.runs,
    }
    figures["seconds"] = round(time.monotonic() - started)
    print(table(figures))
    if args.smoke:
        return check_smoke(figures)
    out = HERE / "results" / f"{datetime.now(UTC):%Y-%m-%d}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)} ({figures['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
