"""The chart installed the ways platform teams install it: plain `helm install` (bundled or
managed servers), upgrade, `helm template` for Argo CD / Flux, as a subchart of an umbrella
chart, from a private registry, with KEDA, and with least privilege.

Helm creates a release's objects in phases: pre-install hooks by weight, then every ordinary
object, then post-install hooks (pre-upgrade hooks run while the previous release's objects are
still the ones in the cluster). A hook that names an object of the chart that its phase has not
made yet waits forever; these tests walk the phases and check every reference.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Render,
    env_of,
    find,
    hook_phases,
    one,
    pod_spec,
    run_helm,
)

POD_KINDS = ("Deployment", "StatefulSet", "Job", "Pod")


def references(obj: dict) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap and ServiceAccount a pod of this object needs."""
    if obj["kind"] not in POD_KINDS:
        return set()
    spec = pod_spec(obj)
    found = {("ServiceAccount", spec.get("serviceAccountName", "default"))}
    for container in spec.get("initContainers", []) + spec["containers"]:
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                found.add(("Secret", ref["secretKeyRef"]["name"]))
            if "configMapKeyRef" in ref:
                found.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                found.add(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                found.add(("Secret", source["secretRef"]["name"]))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            found.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            found.add(("ConfigMap", volume["configMap"]["name"]))
    return found


def key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def weight(obj: dict) -> int:
    return int(obj["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))


def missing_at_each_phase(objects: list[dict], previous: list[dict] | None) -> list[str]:
    """Walk `helm install` (previous=None) or `helm upgrade` from `previous` and say each
    reference to an object of the chart that does not exist yet when it is needed."""
    made = {key(o) for o in objects} | {key(o) for o in previous or []}
    ordinary = [o for o in objects if not hook_phases(o)]
    hooks = [o for o in objects if hook_phases(o)]
    exists = {key(o) for o in previous or [] if not hook_phases(o)}
    problems = []
    before, after = ("pre-upgrade", "post-upgrade") if previous else ("pre-install", "post-install")
    for phase in (before, None, after):
        if phase is None:  # the ordinary objects, all at once
            exists |= {key(o) for o in ordinary}
            batch = ordinary
        else:
            batch = sorted((o for o in hooks if phase in hook_phases(o)), key=weight)
        for obj in batch:
            if phase is not None:
                exists.add(key(obj))  # created (and, for a Job, waited for) in weight order
            for ref in references(obj):
                # Objects the chart does not make are the platform's own (existing Secrets).
                if ref in made and ref not in exists:
                    problems.append(f"{phase or 'install'}: {key(obj)} needs {ref}")
    return problems


@pytest.mark.parametrize("name", SCENARIOS)
def test_no_object_waits_for_one_that_its_phase_has_not_made(render: Render, name: str) -> None:
    values = SCENARIOS[name]
    installed = render(values)
    assert missing_at_each_phase(installed, None) == []
    assert missing_at_each_phase(render(values, upgrade=True), installed) == []


def test_the_walk_catches_a_hook_that_needs_an_object_made_after_it() -> None:
    job = {
        "kind": "Job",
        "metadata": {"name": "migrate", "annotations": {"helm.sh/hook": "pre-install"}},
        "spec": {"template": {"spec": {"serviceAccountName": "sa", "containers": [{}]}}},
    }
    account = {"kind": "ServiceAccount", "metadata": {"name": "sa"}}
    assert missing_at_each_phase([job, account], None) == [
        "pre-install: ('Job', 'migrate') needs ('ServiceAccount', 'sa')"
    ]
    assert missing_at_each_phase([job, account], [account]) == []  # an upgrade: it exists


def test_migrations_before_install_with_a_managed_database_and_after_with_the_bundled_one(
    render: Render,
) -> None:
    bundled = one(render(), "Job")
    annotations = bundled["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,pre-upgrade"
    # Argo CD replaces Helm's hooks by its own: after the sync, once PostgreSQL exists.
    assert annotations["argocd.argoproj.io/hook"] == "PostSync"
    assert pod_spec(bundled)["containers"][0]["args"] == ["migrate"]
    assert bundled["spec"]["ttlSecondsAfterFinished"] > 0
    config = one(render(), "ConfigMap", f"{RELEASE}-queueflow")["data"]
    assert config["QUEUEFLOW_AUTO_MIGRATE"] == "true"  # pods make the schema on a first install

    for name in ("external-existing-secrets", "external-urls", "least-privilege"):
        objects = render(SCENARIOS[name])
        job = one(objects, "Job")
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "argocd.argoproj.io/hook" not in job["metadata"]["annotations"]
        assert "envFrom" not in pod_spec(job)["containers"][0]  # no ConfigMap to wait for
        config = one(objects, "ConfigMap", f"{RELEASE}-queueflow")["data"]
        assert config["QUEUEFLOW_AUTO_MIGRATE"] == "false", name  # no DDL rights in the pods

    # A URL given as a value reaches the Job through a hook Secret made just before it.
    objects = render(SCENARIOS["external-urls"])
    secret = one(objects, "Secret", "-migrate")
    assert hook_phases(secret) == ["pre-install", "pre-upgrade"]
    assert weight(secret) < weight(one(objects, "Job"))
    assert secret["stringData"]["database-url"].startswith("postgresql://queueflow_app:")
    # Separate migration credentials reach the Job only.
    objects = render(SCENARIOS["least-privilege"])
    job_env = env_of(pod_spec(one(objects, "Job"))["containers"][0])
    assert job_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "analytics-db",
        "key": "owner-url",
    }
    assert pod_spec(one(objects, "Job"))["serviceAccountName"] == "queueflow-migrator"
    keys = {  # each service its own role: the worker writes, reporting only reads
        d["metadata"]["name"].rsplit("-", 1)[1]: env_of(pod_spec(d)["containers"][0])
        .get("DATABASE_URL", {})
        .get("valueFrom", {})
        .get("secretKeyRef", {})
        .get("key")
        for d in find(objects, "Deployment")
    }
    assert keys == {"ingest": None, "worker": "worker-url", "reporting": "reporting-url"}


def test_each_service_gets_only_the_urls_it_uses(render: Render) -> None:
    wanted = {
        "ingest": {"REDIS_URL"},
        "reporting": {"DATABASE_URL"},
        "worker": {"REDIS_URL", "DATABASE_URL"},
    }
    for name in ("defaults", "external-existing-secrets", "external-urls"):
        for deployment in find(render(SCENARIOS[name]), "Deployment"):
            component = deployment["metadata"]["name"].rsplit("-", 1)[1]
            env = env_of(pod_spec(deployment)["containers"][0])
            assert env.keys() & {"REDIS_URL", "DATABASE_URL"} == wanted[component], name
            if component == "ingest":  # not even the password it would be made of
                assert "DATABASE_PASSWORD" not in env


def test_bundled_servers_admit_only_the_components_that_use_them(render: Render) -> None:
    def admitted(objects: list[dict], server: str) -> list[dict]:
        (rule,) = one(objects, "NetworkPolicy", f"-{server}")["spec"]["ingress"]
        return rule["from"]

    def component(name: str) -> dict:
        labels = {"app.kubernetes.io/name": "queueflow", "app.kubernetes.io/instance": RELEASE}
        return {"podSelector": {"matchLabels": {**labels, "app.kubernetes.io/component": name}}}

    objects = render()
    assert admitted(objects, "postgresql") == [
        component(c) for c in ("worker", "reporting", "migrate")
    ]
    assert admitted(objects, "redis") == [component("ingest"), component("worker")]
    keda = render(SCENARIOS["keda"])
    operator = SCENARIOS["keda"].get("networkPolicy", {}).get("keda", {}).get("from")
    expected_operator = operator or [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}},
        }
    ]
    assert admitted(keda, "redis") == [component("ingest"), component("worker"), *expected_operator]
    assert "from" not in one(objects, "NetworkPolicy", "-ingest")["spec"]["ingress"][0]


def test_egress_rules_for_default_deny_namespaces(render: Render) -> None:
    objects = render(SCENARIOS["least-privilege"])
    ports = {}
    for policy in find(objects, "NetworkPolicy"):
        spec = policy["spec"]
        assert "Egress" in spec["policyTypes"], policy["metadata"]["name"]
        rules = spec["egress"]
        assert {p["port"] for p in rules[0]["ports"]} == {53}  # DNS first, UDP and TCP
        ports[policy["metadata"]["name"].removeprefix(f"{RELEASE}-queueflow-")] = {
            p["port"] for rule in rules[1:] for p in rule["ports"]
        }
    assert ports == {
        "ingest": {6380},
        "reporting": {5432},
        "worker": {6380, 5432},
        "migrate": {5432},
        "smoke-test": {"http"},
    }
    worker = one(objects, "NetworkPolicy", "-worker")["spec"]["egress"]
    assert {"ipBlock": {"cidr": "10.30.0.0/16"}} in worker[2]["to"]
    # The Job's and the test pod's policies are hooks beside them, made first.
    migrate = one(objects, "NetworkPolicy", "-migrate")
    assert hook_phases(migrate) == hook_phases(one(objects, "Job"))
    assert weight(migrate) < weight(one(objects, "Job"))
    assert hook_phases(one(objects, "NetworkPolicy", "-smoke-test")) == ["test"]
    # Clients only through the ingress controller; the helm test pod still gets through.
    (rule,) = one(objects, "NetworkPolicy", "-ingest")["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert rule["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "smoke-test"
    )


def test_every_pod_pulls_with_the_pull_secrets_from_the_mirror(render: Render) -> None:
    values = SCENARIOS["private-registry"]
    objects = render(values)
    pods = [o for o in objects if o["kind"] in POD_KINDS]
    assert {o["kind"] for o in pods} == set(POD_KINDS)  # hooks and helm test included
    for obj in pods:
        spec = pod_spec(obj)
        assert spec["imagePullSecrets"] == [{"name": "mirror-pull"}, {"name": "regcred"}], key(obj)
        for container in spec["containers"]:
            assert container["image"].startswith("registry.example.internal/"), key(obj)
    image = pod_spec(one(objects, "Deployment", "-ingest"))["containers"][0]["image"]
    assert image == f"registry.example.internal/platform/queueflow@{values['image']['digest']}"
    redis = pod_spec(one(objects, "StatefulSet", "-redis"))["containers"][0]["image"]
    assert redis.startswith("registry.example.internal/mirror/redis:")


def test_gitops_renders_are_identical_and_name_no_generated_password(render: Render) -> None:
    values = SCENARIOS["gitops"]
    first, second = render(values), render(values)
    assert first == second  # Argo CD sees no drift between syncs
    assert not find(first, "Secret")
    for obj in first:
        if obj["kind"] in POD_KINDS:
            for ref in references(obj):
                assert ref[0] != "Secret" or ref[1] == "analytics-passwords", key(obj)
    # Without existing Secrets a render has to invent passwords: the README says so.
    assert render() != render()


def test_a_subchart_of_an_umbrella_chart_with_global_values(helm: Path, tmp_path: Path) -> None:
    umbrella = tmp_path / "platform"
    (umbrella / "charts").mkdir(parents=True)
    shutil.copytree(CHART, umbrella / "charts" / "queueflow")
    (umbrella / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "queueflow", "version": "*"}],
            }
        )
    )
    for values in (
        {},
        {
            "global": {"imagePullSecrets": [{"name": "org-pull"}], "otherChart": {"x": 1}},
            "queueflow": {"worker": {"replicaCount": 3}},
        },
    ):
        done = run_helm(helm, "template", "platform", str(umbrella), values=values)
        assert done.returncode == 0, done.stderr
        objects = [d for d in yaml.safe_load_all(done.stdout) if d]
        ingest = one(objects, "Deployment", "-ingest")
        if values:
            assert pod_spec(ingest)["imagePullSecrets"] == [{"name": "org-pull"}]
        assert ingest["metadata"]["labels"]["app.kubernetes.io/instance"] == "platform"


def test_keda_reaches_redis_by_its_full_name_and_with_the_right_secret(
    render: Render, helm: Path
) -> None:
    (trigger,) = one(render(SCENARIOS["keda"]), "ScaledObject")["spec"]["triggers"]
    host = f"{RELEASE}-queueflow-redis.{NAMESPACE}.svc.cluster.local:6379"
    assert trigger["metadata"]["address"] == host  # KEDA resolves short names in its own namespace
    auth = one(render(SCENARIOS["keda"]), "TriggerAuthentication")["spec"]["secretTargetRef"]
    secret = one(render(), "Secret")
    assert auth == [
        {"parameter": "password", "name": secret["metadata"]["name"], "key": "redis-password"}
    ]
    assert "redis-password" in secret["stringData"]

    external = render(SCENARIOS["keda-external"])
    (trigger,) = one(external, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["address"] == "redis.example.internal:6380"
    assert trigger["metadata"]["enableTLS"] == "true"
    auth = one(external, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "analytics-redis", "key": "password"}]
    # An external Redis without a password: no TriggerAuthentication to point at nothing.
    no_password = {**SCENARIOS["keda-external"]}
    no_password["worker"] = {**no_password["worker"], "keda": {**no_password["worker"]["keda"]}}
    no_password["worker"]["keda"]["passwordSecret"] = {"name": ""}
    objects = render(no_password)
    assert not find(objects, "TriggerAuthentication")
    assert "authenticationRef" not in one(objects, "ScaledObject")["spec"]["triggers"][0]


def test_a_changed_database_url_rolls_the_pods(render: Render) -> None:
    def checksum(values: dict) -> str:
        worker = one(render(values), "Deployment", "-worker")
        return worker["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]

    values = SCENARIOS["external-urls"]
    moved = {**values, "externalDatabase": {"url": "postgresql://u:p@elsewhere:5432/queueflow"}}
    assert checksum(values) != checksum(moved)
    assert checksum({}) == checksum({})  # generated passwords do not roll pods on every upgrade


def test_bundled_redis_refuses_writes_before_the_kernel_kills_it(render: Render) -> None:
    args = pod_spec(one(render(), "StatefulSet", "-redis"))["containers"][0]["args"]
    assert args[args.index("--maxmemory") + 1] == str(1024**3 * 3 // 4)  # 75% of the 1Gi limit
    args = pod_spec(one(render({"redis": {"maxmemory": "600mb"}}), "StatefulSet", "-redis"))
    assert "600mb" in args["containers"][0]["args"]


def test_redis_readiness_needs_a_pong(render: Render, tmp_path: Path) -> None:
    """The probe's command, run against a real redis-server: an error reply such as NOAUTH
    makes `redis-cli ping` exit 0, so only PONG may count as ready."""
    probe = pod_spec(one(render(), "StatefulSet", "-redis"))["containers"][0]["readinessProbe"]
    command = probe["exec"]["command"]
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not (server and cli):
        pytest.skip("redis-server/redis-cli are not installed (Debian: redis-server redis-tools)")
    from tests.helpers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--requirepass",
            "right",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        env = {"PATH": str(tmp_path) + ":/usr/bin:/bin"}
        wrapper = tmp_path / "redis-cli"  # the probe's redis-cli, aimed at this server
        wrapper.write_text(f'#!/bin/sh\nexec {cli} -p {port} "$@"\n')
        wrapper.chmod(0o755)
        for _ in range(50):
            if subprocess.run(
                [cli, "-p", str(port), "-a", "right", "ping"], capture_output=True
            ).stdout:
                break
        wrong = subprocess.run(command, env={**env, "REDISCLI_AUTH": "wrong"}, capture_output=True)
        right = subprocess.run(command, env={**env, "REDISCLI_AUTH": "right"}, capture_output=True)
        assert wrong.returncode != 0 and right.returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_long_release_names_keep_object_names_distinct_and_valid(render: Render) -> None:
    release = "a" * 53  # the longest release name Helm accepts
    objects = render({"redis": {"auth": {"existingSecret": "r"}}}, release=release)
    names: dict[str, set[str]] = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= (52 if obj["kind"] == "StatefulSet" else 63), name
        assert name not in names.setdefault(obj["kind"], set()), (obj["kind"], name)
        names[obj["kind"]].add(name)
    for statefulset in find(objects, "StatefulSet"):  # headless governing Services
        (service,) = [
            s
            for s in find(objects, "Service")
            if s["metadata"]["name"] == statefulset["spec"]["serviceName"]
        ]
        assert service["spec"]["clusterIP"] == "None"


def test_uids_can_be_left_to_the_platform(render: Render) -> None:
    for obj in render(SCENARIOS["openshift"]):
        if obj["kind"] in POD_KINDS:
            context = pod_spec(obj)["securityContext"]
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys(), key(obj)
            assert context["runAsNonRoot"] is True
    for obj in render():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert pod_spec(obj)["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_drains_are_never_held_by_unhealthy_pods_and_initdb_has_time(render: Render) -> None:
    for pdb in find(render(), "PodDisruptionBudget"):
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    postgres = pod_spec(one(render(), "StatefulSet", "-postgresql"))["containers"][0]
    startup = postgres["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_kubernetes_versions_without_the_sleep_action_are_refused(helm: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.30.0-0"  # lifecycle.preStop.sleep
    done = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.29.9")
    assert done.returncode != 0 and "kubeVersion" in done.stderr


def test_validation_failures_say_what_to_set(helm: Path) -> None:
    for values, message in (
        ({"redis": {"enabled": False}}, "externalRedis.url or externalRedis.existingSecret"),
        ({"postgresql": {"enabled": False}}, "externalDatabase.url or"),
        ({"redis": {"resources": {"limits": {"memory": "1G"}}}}, "redis.maxmemory"),
    ):
        done = run_helm(helm, "template", RELEASE, str(CHART), values=values)
        assert done.returncode != 0 and message in done.stderr, (values, done.stderr)
    assert "fail " not in "".join(
        p.read_text()
        for p in (CHART / "templates").rglob("*")
        if p.name != "_validate.tpl" and p.is_file()
    )


def test_the_schema_covers_every_value_and_allows_global(helm: Path) -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: object, node: dict, path: str) -> None:
        assert node, f"{path} is not in values.schema.json"
        if isinstance(value, dict) and node.get("type") == "object" and "properties" in node:
            for name, child in value.items():
                props = node["properties"]
                extra = node.get("additionalProperties")
                target = props.get(name, extra if isinstance(extra, dict) else {})
                if name not in props and extra is True:
                    continue
                walk(child, target, f"{path}.{name}")

    walk(values, schema, "values")
    assert schema["properties"]["global"]["additionalProperties"] is True
    done = run_helm(helm, "template", RELEASE, str(CHART), values={"global": {"anything": 1}})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["defaults", "external-urls", "least-privilege"])
def test_helm_install_dry_run_sorts_the_hooks_as_the_templates_say(
    helm: Path, render: Render, name: str
) -> None:
    """`helm install --dry-run=client`: Helm's own split of hooks and manifest, in its order."""
    done = run_helm(
        helm, "install", RELEASE, str(CHART), "--dry-run=client", values=SCENARIOS[name]
    )
    assert done.returncode == 0, done.stderr
    hooks_text, _, rest = done.stdout.partition("HOOKS:")[2].partition("MANIFEST:")
    hooks = [d for d in yaml.safe_load_all(hooks_text) if d]
    manifest = [d for d in yaml.safe_load_all(rest.partition("NOTES:")[0]) if d]
    rendered = render(SCENARIOS[name])
    assert sorted(map(key, hooks)) == sorted(key(o) for o in rendered if hook_phases(o))
    assert sorted(map(key, manifest)) == sorted(key(o) for o in rendered if not hook_phases(o))
    install_hooks = [o for o in hooks if {"pre-install", "post-install"} & set(hook_phases(o))]
    job = one(install_hooks, "Job")
    companions = [o for o in install_hooks if o is not job]
    assert all(weight(o) < weight(job) for o in companions)
    assert missing_at_each_phase(hooks + manifest, None) == []
