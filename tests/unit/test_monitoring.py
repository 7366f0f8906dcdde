"""The alert rules and the Grafana dashboard the chart ships: well formed, documented, naming
only metrics that QueueFlow exports, and scoped to one release (namespace and release labels)
so that several releases scraped by one Prometheus never mix. With promtool installed
(.ci/promtool.sh), its own checks and the unit tests in tests/monitoring/ run too."""

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
ALERT_TESTS = ROOT / "tests/monitoring/alerts_test.yaml"

# The labels that tell one release from another: `namespace` from the Prometheus Operator,
# `release` from the chart's ServiceMonitor (tests/chart/test_chart_monitoring.py).
SCOPE = ("namespace", "release")
AGGREGATIONS = ("sum", "max", "min", "avg", "count", "group", "stddev", "stdvar", "topk")

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
        "QueueFlowIngestDown",
    }
    assert expected <= set(names)
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used and used <= exported, (rule["alert"], used - exported)
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])


def labels_of(clause: str) -> set[str]:
    return {label.strip() for label in clause.split(",") if label.strip()}


def test_every_alert_aggregates_by_namespace_and_release() -> None:
    """Each aggregation keeps exactly the release's labels (and le, for a histogram's
    quantile; partition, for the stream gauges summed over partitions), every vector match is
    on them, and nothing is global (absent, on())."""
    for rule in rules():
        expr, name = rule["expr"], rule["alert"]
        assert "absent" not in expr and "without" not in expr, name
        aggregations = re.findall(rf"\b({'|'.join(AGGREGATIONS)})\s*(by\s*\(([^)]*)\))?\s*\(", expr)
        assert aggregations, name
        for function, clause, grouping in aggregations:
            assert clause, (name, f"{function} without by (...)")
            assert labels_of(grouping) - {"le", "partition"} == set(SCOPE), (name, grouping)
        for matching in re.findall(r"\b(?:on|ignoring)\s*\(([^)]*)\)", expr):
            assert labels_of(matching) == set(SCOPE), (name, matching)
        summary = rule["annotations"]["summary"]
        for label in SCOPE:
            assert f"{{{{ $labels.{label} }}}}" in summary, (name, label)


def test_the_rule_file_says_what_a_plain_prometheus_must_attach() -> None:
    header = ALERTS.read_text().split("groups:", 1)[0]
    assert "rule_files" in header
    for label in SCOPE:
        assert re.search(rf"target_label: {label}\b", header), label


def test_workers_down_needs_work_and_counts_workers_instead_of_absent() -> None:
    """Workers scaled to zero (KEDA, minReplicas: 0) on an idle stream are not down: the
    alert wants events arriving, and a release with no worker target, not a global absent()."""
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in rules()}
    work, _, workers = exprs["QueueFlowWorkersDown"].partition(" unless on (namespace, release) ")
    assert "queueflow_ingest_events_accepted_total" in work
    assert workers == 'count by (namespace, release) (queueflow_build_info{service="worker"})'
    anything, _, ingest = exprs["QueueFlowIngestDown"].partition(" unless on (namespace, release) ")
    assert anything == "count by (namespace, release) (queueflow_build_info)"
    assert ingest == 'count by (namespace, release) (queueflow_build_info{service="ingest"})'


def test_the_promtool_tests_make_every_alert_fire_and_cover_several_releases() -> None:
    """Without promtool its tests cannot run, but they can still be seen to exist."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired: set[str] = set()
    releases: set[tuple[str, str]] = set()
    for test in tests:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                fired.add(case["alertname"])
                releases.add(tuple(alert["exp_labels"][label] for label in SCOPE))
    assert fired == {rule["alert"] for rule in rules()}
    assert len(releases) >= 3


def dashboard_variables() -> dict[str, dict]:
    return {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}


def test_the_dashboard_picks_one_release_by_namespace_and_release() -> None:
    variables = dashboard_variables()
    for label in SCOPE:
        variable = variables[label]
        assert variable["type"] == "query"
        assert variable["definition"] == variable["query"]["query"]
        assert variable["definition"].endswith(f", {label})")
        # one release at a time: a sum or max over several would mix their streams
        assert not variable["multi"] and not variable["includeAll"]
    assert 'namespace="$namespace"' in variables["release"]["definition"]


def test_every_dashboard_query_is_filtered_by_the_release() -> None:
    wanted = [f'{label}="${label}"' for label in SCOPE]
    for expr in dashboard_exprs():
        for name in metric_names(expr.replace("$__rate_interval", "5m")):
            uses = re.findall(rf"\b{re.escape(name)}\b(\{{[^}}]*\}})?", expr)
            for selector in uses:
                assert all(w in selector for w in wanted), (expr, name)
        for matching in re.findall(r"\bon\s*\(([^)]*)\)", expr):
            assert "namespace" in labels_of(matching), expr


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


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (.ci/promtool.sh installs the Debian package prometheus)",
)
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yaml"],
        cwd=ROOT / "tests/monitoring",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
