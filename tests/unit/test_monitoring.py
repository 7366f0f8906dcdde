"""The alert rules and the Grafana dashboard the chart ships: well formed, documented, and
naming only metrics that QueueFlow exports. With promtool installed, its own checks and the
unit tests in tests/monitoring/ run too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import queueflow.core.observability  # noqa: F401 - registers every QueueFlow metric

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts/queueflow/files/alerts.yaml"
DASHBOARD = ROOT / "charts/queueflow/files/dashboard.json"

# PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    names = {"up"}  # Prometheus's own, per target
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: what is left once strings, label matchers,
    ranges, grouping clauses, function calls, numbers and keywords are taken out."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b[a-z_]+\s*\(", "(", text)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return tokens - KEYWORDS


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_the_name_extraction_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, pod) (rate(a_bucket{route=~"/x"}[5m]))) > 0.2 '
        'and on() max(b) + absent(c{service="w"})'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_every_alert_names_exported_metrics_and_carries_a_runbook() -> None:
    exported = exported_names()
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    expected = {
        "QueueFlowConsumerLagHigh",
        "QueueFlowOldestPendingTooOld",
        "QueueFlowNoProgress",
        "QueueFlowDeadLettersGrowing",
        "QueueFlowIngestErrors",
        "QueueFlowIngestLatencyHigh",
        "QueueFlowFreshnessSlow",
        "QueueFlowWorkersDown",
    }
    assert expected <= set(names)
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used and used <= exported, (rule["alert"], used - exported)
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])


def test_every_dashboard_query_names_exported_metrics() -> None:
    exported = exported_names() | {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        used = metric_names(expr.replace("$__rate_interval", "5m"))
        assert used and used <= exported, (expr, used - exported)
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    for topic in ("Lag", "Oldest pending", "Freshness", "Dead letters", "by pod", "latency"):
        assert any(topic.lower() in title.lower() for title in titles), topic


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    subprocess.run(["promtool", "check", "rules", str(ALERTS)], check=True, capture_output=True)
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yaml"],
        cwd=ROOT / "tests/monitoring",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
