"""The chart, offline: helm lint, helm template for several value sets, every object checked
against the Kubernetes schemas, and what the objects say asserted."""

from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    RELEASE,
    SCENARIOS,
    Render,
    env_of,
    find,
    one,
    pod_spec,
    run_helm,
)

KUBERNETES_VERSIONS = ("1.30.0", "1.33.0", "1.35.0")  # oldest supported, and newer ones
CUSTOM_KINDS = {  # kinds of CRDs, which kubernetes-validate has no schema for
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}
EXTERNAL = SCENARIOS["external-existing-secrets"]
KEDA = SCENARIOS["keda"]
NO_HPA = SCENARIOS["hpa-off"]
INGRESS = SCENARIOS["ingress"]
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "Pod")


def test_lint_strict(helm: Path) -> None:
    for values in SCENARIOS.values():
        done = run_helm(helm, "lint", "--strict", str(CHART), values=values)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_object_is_valid_kubernetes(render: Render, name: str) -> None:
    for version in KUBERNETES_VERSIONS:
        for obj in render(SCENARIOS[name], kube=version):
            if obj["kind"] in CUSTOM_KINDS:
                assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]]
                continue
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_container_has_probes_resources_and_restricted_security(
    render: Render, name: str
) -> None:
    workloads = [o for o in render(SCENARIOS[name]) if o["kind"] in WORKLOAD_KINDS]
    assert workloads
    for obj in workloads:
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False  # <SERVICE>_PORT variables off
        for container in spec["containers"]:
            where = f"{obj['kind']} {obj['metadata']['name']}/{container['name']}"
            assert container["securityContext"] == RESTRICTED_CONTAINER, where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"]["memory"], where
            if obj["kind"] in ("Deployment", "StatefulSet"):
                assert container["livenessProbe"] and container["readinessProbe"], where


def test_services_select_their_pods_and_ports_exist(render: Render) -> None:
    objects = render(INGRESS)
    workloads = find(objects, "Deployment") + find(objects, "StatefulSet")
    for obj in workloads:
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in find(objects, "Service"):
        selector = service["spec"]["selector"].items()
        (target,) = [
            w for w in workloads if selector <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for c in pod_spec(target)["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    ingress = one(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "analytics-tls"
    routes = {
        (p["path"], p["pathType"]): p["backend"]["service"]["name"]
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    }
    ingest, reporting = f"{RELEASE}-queueflow-ingest", f"{RELEASE}-queueflow-reporting"
    expected = {
        ("/event", "Exact"): ingest,
        ("/events", "Exact"): ingest,
        ("/tracker.js", "Exact"): ingest,
        ("/stats", "Prefix"): reporting,  # /stats/timeseries, /stats/breakdown, ...
        ("/sites", "Exact"): reporting,
        ("/", "Exact"): reporting,  # the dashboard
        ("/dashboard", "Prefix"): reporting,  # its script and style
    }
    assert routes == expected
    assert set(routes.values()) <= services.keys()
    route = one(objects, "HTTPRoute")
    matches = {
        (m["path"]["value"], m["path"]["type"]): b["name"]
        for rule in route["spec"]["rules"]
        for m in rule["matches"]
        for b in rule["backendRefs"]
    }
    prefix = {"Exact": "Exact", "Prefix": "PathPrefix"}
    assert matches == {(path, prefix[kind]): name for (path, kind), name in expected.items()}
    without = one(render({"ingress": {"enabled": True, "dashboard": False}}), "Ingress")
    paths = {p["path"] for p in without["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/event", "/events", "/tracker.js", "/stats", "/sites"}


def test_worker_is_one_consumer_per_pod_and_outlives_its_shutdown(render: Render) -> None:
    objects = render()
    worker = one(objects, "Deployment", "-worker")
    container = pod_spec(worker)["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["QUEUEFLOW_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config = one(objects, "ConfigMap", f"{RELEASE}-queueflow")["data"]
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > float(config["QUEUEFLOW_SHUTDOWN_TIMEOUT"])
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64
    changed = one(render({"config": {"batchSize": 200}}), "Deployment", "-worker")
    assert (
        changed["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        != (annotations["checksum/config"])
    )


def test_a_grace_period_below_the_shutdown_timeout_is_refused(helm: Path) -> None:
    done = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        values={"worker": {"terminationGracePeriodSeconds": 10}},
    )
    assert done.returncode != 0 and "terminationGracePeriodSeconds" in done.stderr


def test_hpa_and_keda_never_both_and_replicas_left_to_them(render: Render, helm: Path) -> None:
    defaults = render()
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in find(defaults, "HorizontalPodAutoscaler")}
    assert hpas == {f"{RELEASE}-queueflow-ingest", f"{RELEASE}-queueflow-worker"}
    for deployment in find(defaults, "Deployment"):
        scaled = deployment["metadata"]["name"] in hpas
        assert ("replicas" in deployment["spec"]) is not scaled

    keda = render(KEDA)
    scaled_object = one(keda, "ScaledObject")
    assert scaled_object["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-queueflow-worker"
    lag, pending = scaled_object["spec"]["triggers"]  # one stream: its lag and its pending entries
    auth = one(keda, "TriggerAuthentication")
    for trigger in (lag, pending):
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["stream"] == "events_stream"
        assert trigger["metadata"]["consumerGroup"] == "analytics_workers"
        assert auth["metadata"]["name"] == trigger["authenticationRef"]["name"]
    assert "lagCount" in lag["metadata"] and "lagCount" not in pending["metadata"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in find(keda, "HorizontalPodAutoscaler")} == {
        f"{RELEASE}-queueflow-ingest"
    }
    assert "replicas" not in one(keda, "Deployment", "-worker")["spec"]

    both = {"worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}}
    done = run_helm(helm, "template", RELEASE, str(CHART), values=both)
    assert done.returncode != 0 and "exclusive" in done.stderr
    external = {**EXTERNAL, **KEDA}  # KEDA cannot guess where an external Redis is
    done = run_helm(helm, "template", RELEASE, str(CHART), values=external)
    assert done.returncode != 0 and "redisAddress" in done.stderr

    fixed = render(NO_HPA)
    assert not find(fixed, "HorizontalPodAutoscaler") and not find(fixed, "ScaledObject")
    assert one(fixed, "Deployment", "-worker")["spec"]["replicas"] == 3


def test_pod_disruption_budgets_only_over_more_than_one_pod(render: Render) -> None:
    names = {p["metadata"]["name"] for p in find(render(), "PodDisruptionBudget")}
    assert names == {f"{RELEASE}-queueflow-{c}" for c in ("ingest", "reporting", "worker")}
    names = {p["metadata"]["name"] for p in find(render(NO_HPA), "PodDisruptionBudget")}
    assert names == {f"{RELEASE}-queueflow-reporting", f"{RELEASE}-queueflow-worker"}


def test_redis_keeps_every_entry_and_postgres_persists(render: Render) -> None:
    objects = render()
    redis = one(objects, "StatefulSet", "-redis")
    (script,) = pod_spec(redis)["containers"][0]["args"]
    assert "--appendonly yes" in script and "--maxmemory-policy noeviction" in script
    for statefulset in (redis, one(objects, "StatefulSet", "-postgresql")):
        assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
        image = pod_spec(statefulset)["containers"][0]["image"]
        name, tag = image.rsplit(":", 1)
        assert (
            name in ("docker.io/library/redis", "docker.io/library/postgres") and tag[0].isdigit()
        )


def test_external_servers_come_from_existing_secrets(render: Render) -> None:
    objects = render(EXTERNAL)
    assert not find(objects, "StatefulSet")
    (secret,) = find(objects, "Secret")  # the generated reporting token only: no URL, no password
    assert list(secret["stringData"]) == ["stats-tokens"]
    redis = {"name": "analytics-redis", "key": "url"}
    database = {"name": "analytics-db", "key": "url"}
    for deployment in find(objects, "Deployment"):
        env = env_of(pod_spec(deployment)["containers"][0])
        if "REDIS_URL" in env:
            assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == redis
        if "DATABASE_URL" in env:
            assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == database
    # Without bundled servers there is nothing of theirs to protect.
    assert {p["metadata"]["name"] for p in find(objects, "NetworkPolicy")} == {
        f"{RELEASE}-queueflow-{c}" for c in ("ingest", "reporting", "worker")
    }


def test_notes_never_print_secrets(helm: Path) -> None:
    for values in ({}, INGRESS):
        done = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", values=values)
        assert done.returncode == 0, done.stderr
        manifest, _, notes = done.stdout.partition("NOTES:")
        secret = next(
            d
            for d in yaml.safe_load_all(manifest.split("MANIFEST:", 1)[1])
            if d and d["kind"] == "Secret"
        )
        assert "helm test" in notes and "/event" in notes
        for value in secret["stringData"].values():
            assert value not in notes


def test_schema_rejects_typos_and_wrong_types(helm: Path) -> None:
    for bad, message in (
        ({"worker": {"replicaCont": 3}}, "replicaCont"),
        ({"ingest": {"replicaCount": "two"}}, "replicaCount"),
        ({"config": {"logLevel": "verbose"}}, "logLevel"),
        ({"redis": {"persistence": {"size": "lots"}}}, "size"),
        ({"externalDatabase": {"url": "mysql://x"}}, "url"),
    ):
        done = run_helm(helm, "template", RELEASE, str(CHART), values=bad)
        assert done.returncode != 0 and message in done.stderr, (bad, done.stderr)


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"]
    assert chart["apiVersion"] == "v2"
