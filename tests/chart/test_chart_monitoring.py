"""The chart's monitoring objects, as a real helm renders them: the ServiceMonitor and the
PrometheusRule only where the Prometheus Operator's API is served (or forced), the target
label `release` the alerts and the dashboard tell releases apart by, and the rules and the
dashboard exactly the files the chart ships (tests/unit/test_monitoring.py checks those)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.chart.conftest import CHART, RELEASE, Render, find, one, run_helm

SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
PROMETHEUS_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
MONITORING_APIS = (SERVICE_MONITOR_API, PROMETHEUS_RULE_API)
FORCED = {"monitoring": {"serviceMonitor": {"force": True}, "prometheusRule": {"force": True}}}
DISABLED = {
    "monitoring": {
        "serviceMonitor": {"enabled": False, "force": True},
        "prometheusRule": {"enabled": False, "force": True},
        "dashboard": {"enabled": False},
    }
}
SCRAPED = {"ingest", "reporting", "worker"}
INSTANCE = "app.kubernetes.io/instance"


def operator_kinds(objects: list[dict]) -> set[str]:
    return {o["kind"] for o in objects} & {"ServiceMonitor", "PrometheusRule"}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) matches these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_operator_objects_only_where_their_api_is_served_or_forced(render: Render) -> None:
    assert not operator_kinds(render())
    for objects in (render(api_versions=MONITORING_APIS), render(FORCED)):
        assert operator_kinds(objects) == {"ServiceMonitor", "PrometheusRule"}
    # each object follows its own API
    assert operator_kinds(render(api_versions=(SERVICE_MONITOR_API,))) == {"ServiceMonitor"}
    assert operator_kinds(render(api_versions=(PROMETHEUS_RULE_API,))) == {"PrometheusRule"}
    # not asked for: nothing, whatever the cluster serves or force says
    assert not operator_kinds(render(DISABLED, api_versions=MONITORING_APIS))


def test_each_monitoring_template_renders_its_own_kind(helm: Path) -> None:
    for template, kind in (
        ("servicemonitor.yaml", "ServiceMonitor"),
        ("prometheusrule.yaml", "PrometheusRule"),
        ("dashboard-configmap.yaml", "ConfigMap"),
    ):
        only = ("--show-only", f"templates/{template}")
        done = run_helm(helm, "template", RELEASE, str(CHART), *only, values=FORCED)
        assert done.returncode == 0, done.stderr
        assert [d["kind"] for d in yaml.safe_load_all(done.stdout) if d] == [kind], template
    assert not (CHART / "templates" / "monitoring.yaml").exists()


def test_the_service_monitor_scrapes_every_queueflow_service_of_the_release(
    render: Render,
) -> None:
    objects = render(FORCED)
    monitor = one(objects, "ServiceMonitor")
    selected = [
        s
        for s in find(objects, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected} == SCRAPED
    assert {s["metadata"]["labels"][INSTANCE] for s in selected} == {RELEASE}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    for service in selected:
        assert "http" in {port["name"] for port in service["spec"]["ports"]}
    # the labels a Prometheus selects ServiceMonitors by (kube-prometheus-stack: release)
    values = {"monitoring": {"serviceMonitor": {"force": True, "labels": {"release": "prom"}}}}
    assert one(render(values), "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"


def test_the_service_monitor_labels_every_target_with_its_release(render: Render) -> None:
    """The alerts aggregate by (namespace, release): the operator adds `namespace`, this
    relabeling `release`, from the label every selected Service carries."""
    (endpoint,) = one(render(FORCED), "ServiceMonitor")["spec"]["endpoints"]
    (release,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "release"]
    assert release["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_instance"]
    assert release.get("action", "replace") == "replace"
    assert release.get("regex", "(.*)") == "(.*)" and release.get("replacement", "$1") == "$1"
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        assert "by (namespace, release" in rule["expr"], rule["alert"]


def test_the_service_monitor_keeps_queueflows_own_service_label(render: Render) -> None:
    """queueflow_build_info{service="worker"} is what WorkersDown and IngestDown count; the
    operator's target label `service` would rename it exported_service."""
    (endpoint,) = one(render(FORCED), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint.get("honorLabels") is not True  # the target's namespace and release win
    restore, drop = endpoint["metricRelabelings"]
    assert restore["sourceLabels"] == ["exported_service"] and restore["targetLabel"] == "service"
    assert restore["regex"] == "(.+)"  # only where the collision happened
    assert drop == {"action": "labeldrop", "regex": "exported_service"}


def test_the_prometheus_rule_is_the_rule_file(render: Render) -> None:
    labels = {"prometheus": "main"}
    values = {"monitoring": {"prometheusRule": {"force": True, "labels": labels}}}
    rule = one(render(values), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["metadata"]["labels"]["prometheus"] == "main"
    assert rule["metadata"]["labels"][INSTANCE] == RELEASE


def test_the_dashboard_config_map_carries_the_sidecar_label(render: Render) -> None:
    dashboard = one(render(), "ConfigMap", "-dashboard")  # no API needed
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads(dashboard["data"]["queueflow.json"]) == shipped
    own = {"label": "dashboards", "labelValue": "queueflow", "annotations": {"folder": "QF"}}
    dashboard = one(render({"monitoring": {"dashboard": own}}), "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["dashboards"] == "queueflow"
    assert "grafana_dashboard" not in dashboard["metadata"]["labels"]
    assert dashboard["metadata"]["annotations"] == {"folder": "QF"}
    assert not find(render(DISABLED), "ConfigMap", "-dashboard")
