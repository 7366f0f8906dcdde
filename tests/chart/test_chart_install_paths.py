"""The chart installed the ways platform teams install it: plain `helm install` (bundled or
managed servers), upgrade, `helm template` for Argo CD / Flux, as a subchart of an umbrella
chart, from a private registry, with KEDA, and with least privilege.

Helm creates a release's objects in phases: pre-install hooks by weight, then every ordinary
object, then post-install hooks (pre-upgrade hooks run while the previous release's objects are
still the ones in the cluster). A hook that names an object of the chart that its phase has not
made yet waits forever; these tests walk the phases and check every reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
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
from tests.helpers import free_port

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
    # A read replica for reporting only (DATABASE_READ_URL); the others never see it.
    replica = {
        d["metadata"]["name"].rsplit("-", 1)[1]: env_of(pod_spec(d)["containers"][0]).get(
            "DATABASE_READ_URL"
        )
        for d in find(objects, "Deployment")
    }
    assert replica == {
        "ingest": None,
        "worker": None,
        "reporting": {
            "name": "DATABASE_READ_URL",
            "valueFrom": {"secretKeyRef": {"name": "analytics-db", "key": "replica-reporting-url"}},
        },
    }


def test_each_service_gets_only_the_urls_it_uses(render: Render) -> None:
    wanted = {
        "ingest": {"REDIS_URL"},
        "reporting": {"DATABASE_URL", "REDIS_URL"},  # Redis for freshness only
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
    assert admitted(objects, "redis") == [
        component("ingest"),
        component("worker"),
        component("reporting"),
    ]
    keda = render(SCENARIOS["keda"])
    operator = SCENARIOS["keda"].get("networkPolicy", {}).get("keda", {}).get("from")
    expected_operator = operator or [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}},
        }
    ]
    assert admitted(keda, "redis") == [
        component("ingest"),
        component("worker"),
        component("reporting"),
        *expected_operator,
    ]
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
        "reporting": {5432, 6380},
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
    # Clients only through the ingress controller; metrics scrapers (Prometheus scrapes ingest
    # and reporting too) and the helm test pod still get through.
    for component in ("ingest", "reporting"):
        (rule,) = one(objects, "NetworkPolicy", f"-{component}")["spec"]["ingress"]
        ingress_nginx = {"kubernetes.io/metadata.name": "ingress-nginx"}
        assert rule["from"][0]["namespaceSelector"]["matchLabels"] == ingress_nginx
        assert rule["from"][1] == {"namespaceSelector": {}}  # networkPolicy.metricsFrom
        smoke = rule["from"][2]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        assert smoke == "smoke-test"


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
    triggers = one(render(SCENARIOS["keda"]), "ScaledObject")["spec"]["triggers"]
    host = f"{RELEASE}-queueflow-redis.{NAMESPACE}.svc.cluster.local:6379"
    # KEDA resolves short names in its own namespace.
    assert {t["metadata"]["address"] for t in triggers} == {host}
    auth = one(render(SCENARIOS["keda"]), "TriggerAuthentication")["spec"]["secretTargetRef"]
    secret = one(render(), "Secret")
    assert auth == [
        {"parameter": "password", "name": secret["metadata"]["name"], "key": "redis-password"}
    ]
    assert "redis-password" in secret["stringData"]

    external = render(SCENARIOS["keda-external"])
    for trigger in one(external, "ScaledObject")["spec"]["triggers"]:
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
    for trigger in one(objects, "ScaledObject")["spec"]["triggers"]:
        assert "authenticationRef" not in trigger


def test_a_changed_database_url_rolls_the_pods(render: Render) -> None:
    def checksum(values: dict) -> str:
        worker = one(render(values), "Deployment", "-worker")
        return worker["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]

    values = SCENARIOS["external-urls"]
    moved = {**values, "externalDatabase": {"url": "postgresql://u:p@elsewhere:5432/queueflow"}}
    assert checksum(values) != checksum(moved)
    assert checksum({}) == checksum({})  # generated passwords do not roll pods on every upgrade


def redis_script(objects: list[dict]) -> str:
    (script,) = pod_spec(one(objects, "StatefulSet", "-redis"))["containers"][0]["args"]
    return script


def test_bundled_redis_refuses_writes_before_the_kernel_kills_it(render: Render) -> None:
    assert f"--maxmemory {1024**3 * 3 // 4}" in redis_script(render())  # 75% of the 1Gi limit
    assert "--maxmemory 600mb" in redis_script(render({"redis": {"maxmemory": "600mb"}}))


def test_bundled_redis_starts_as_rendered_and_is_ready_only_on_pong(
    render: Render, tmp_path: Path
) -> None:
    """The StatefulSet's start command and readiness probe, run against a real redis-server:
    the password stays off the command line, and an error reply such as NOAUTH (on which
    `redis-cli ping` exits 0) is not ready."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not (server and cli):
        pytest.skip("redis-server/redis-cli are not installed (Debian: redis-server redis-tools)")
    container = pod_spec(one(render(), "StatefulSet", "-redis"))["containers"][0]
    port = free_port()
    script = redis_script(render()).replace("/tmp/", f"{tmp_path}/")
    script = script.replace("--dir /data", f"--dir {tmp_path} --port {port}")
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": "right-password"}
    proc = subprocess.Popen([*container["command"], script], env=env, stdout=subprocess.DEVNULL)
    try:
        probe = container["readinessProbe"]["exec"]["command"]
        wrapper = tmp_path / "bin" / "redis-cli"  # the probe's redis-cli, aimed at this server
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {cli} -p {port} "$@"\n')
        wrapper.chmod(0o755)
        path = f"{wrapper.parent}:{os.environ['PATH']}"
        right = {"PATH": path, "REDISCLI_AUTH": "right-password"}
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env=right, capture_output=True).returncode:
            assert proc.poll() is None and time.monotonic() < deadline, "redis never got ready"
            time.sleep(0.1)
        wrong = {"PATH": path, "REDISCLI_AUTH": "wrong"}
        assert subprocess.run(probe, env=wrong, capture_output=True).returncode != 0
        assert b"right-password" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
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


def test_pull_secrets_named_twice_are_listed_once(render: Render) -> None:
    values = {
        "global": {"imagePullSecrets": ["regcred"]},
        "imagePullSecrets": [{"name": "regcred"}],
    }
    for obj in render(values):
        if obj["kind"] in POD_KINDS:
            assert pod_spec(obj)["imagePullSecrets"] == [{"name": "regcred"}], key(obj)


def test_a_global_registry_replaces_each_images_own(render: Render) -> None:
    objects = render({"global": {"imageRegistry": "mirror.internal"}})
    images = {
        c["image"] for o in objects if o["kind"] in POD_KINDS for c in pod_spec(o)["containers"]
    }
    assert {i.rsplit(":", 1)[0] for i in images} == {
        "mirror.internal/queueflow/queueflow",
        "mirror.internal/library/redis",
        "mirror.internal/library/postgres",
    }


def test_hook_companions_go_when_their_phase_succeeded_and_only_passwords_are_kept(
    render: Render,
) -> None:
    objects = render({**SCENARIOS["external-urls"], "networkPolicy": {"egress": {"enabled": True}}})
    for companion in (
        one(objects, "Secret", "-migrate"),
        one(objects, "NetworkPolicy", "-migrate"),
    ):
        policy = companion["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert policy == "before-hook-creation,hook-succeeded"
    # The Job stays (its logs), until the next run replaces it or its TTL.
    assert one(objects, "Job")["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == (
        "before-hook-creation"
    )
    urls_only = one(objects, "Secret", f"{RELEASE}-queueflow")
    assert "annotations" not in urls_only["metadata"]  # uninstall removes managed URLs
    passwords = one(render(), "Secret", f"{RELEASE}-queueflow")
    assert passwords["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_extra_env_may_set_what_the_job_sets_without_repeating_a_name(render: Render) -> None:
    values = {"extraEnv": [{"name": "QUEUEFLOW_LOG_LEVEL", "value": "debug"}]}
    for obj in render(values):
        if obj["kind"] in POD_KINDS:
            for container in pod_spec(obj)["containers"]:
                names = [e["name"] for e in container.get("env", [])]
                assert len(names) == len(set(names)), key(obj)


def test_pod_labels_never_change_the_selector(render: Render) -> None:
    labels = {"app.kubernetes.io/component": "x", "team": "analytics"}
    ingest = one(render({"ingest": {"podLabels": labels}}), "Deployment", "-ingest")
    pod_labels = ingest["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["team"] == "analytics"
    assert ingest["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_keda_reads_the_database_the_stream_is_in(render: Render) -> None:
    values = {**SCENARIOS["keda-external"]}
    values["worker"] = {
        **values["worker"],
        "keda": {**values["worker"]["keda"], "databaseIndex": 3},
    }
    triggers = one(render(values), "ScaledObject")["spec"]["triggers"]
    assert {t["metadata"]["databaseIndex"] for t in triggers} == {"3"}


def test_values_that_kubernetes_would_refuse_are_refused_first(helm: Path) -> None:
    for values, message in (
        ({"ingest": {"autoscaling": {"minReplicas": 20}}}, "minReplicas must not exceed"),
        (
            {
                **SCENARIOS["keda"],
                "worker": {
                    "autoscaling": {"enabled": False},
                    "keda": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
                },
            },
            "minReplicas must not exceed",
        ),
        ({"ingress": {"enabled": True, "hosts": []}}, "ingress.hosts"),
        ({"ingest": {"pdb": {"maxUnavailable": 0}}}, "maxUnavailable"),
        ({"podSecurityContext": {"runAsUsr": 5}}, "runAsUsr"),
        ({"containerSecurityContext": {"readOnlyRootFilesytem": False}}, "readOnlyRootFilesytem"),
        ({"imagePullSecrets": [{}]}, "imagePullSecrets"),
    ):
        done = run_helm(helm, "template", RELEASE, str(CHART), values=values)
        assert done.returncode != 0 and message in done.stderr, (values, done.stderr)


def test_only_ingest_holds_the_user_id_key(render: Render) -> None:
    values = {"userIdKey": {"existingSecret": "analytics-keys", "existingSecretKey": "uid"}}
    for deployment in find(render(values), "Deployment"):
        env = env_of(pod_spec(deployment)["containers"][0])
        key = env.get("QUEUEFLOW_USER_ID_KEY")
        if deployment["metadata"]["name"].endswith("-ingest"):
            assert key["valueFrom"]["secretKeyRef"] == {"name": "analytics-keys", "key": "uid"}
        else:
            assert key is None
    assert all(
        "QUEUEFLOW_USER_ID_KEY" not in env_of(pod_spec(d)["containers"][0])
        for d in find(render(), "Deployment")
    )


def test_reporting_is_closed_by_default_with_a_generated_token(render: Render, helm: Path) -> None:
    objects = render()
    secret = one(objects, "Secret", f"{RELEASE}-queueflow")
    assert len(secret["stringData"]["stats-tokens"]) == 40
    holders = {
        key(o)
        for o in objects
        if o["kind"] in POD_KINDS
        for c in pod_spec(o)["containers"]
        if "QUEUEFLOW_STATS_TOKENS" in env_of(c)
    }
    assert holders == {
        ("Deployment", f"{RELEASE}-queueflow-reporting"),
        ("Pod", f"{RELEASE}-queueflow-smoke-test"),  # helm test reads with it
    }
    own = render({"statsTokens": {"existingSecret": "analytics-tokens", "existingSecretKey": "t"}})
    assert "stats-tokens" not in (
        find(own, "Secret")[0]["stringData"] if find(own, "Secret") else {}
    )
    reporting = env_of(pod_spec(one(own, "Deployment", "-reporting"))["containers"][0])
    assert reporting["QUEUEFLOW_STATS_TOKENS"]["valueFrom"]["secretKeyRef"] == {
        "name": "analytics-tokens",
        "key": "t",
    }
    opened = render({"statsTokens": {"generate": False}})
    reporting = env_of(pod_spec(one(opened, "Deployment", "-reporting"))["containers"][0])
    assert "QUEUEFLOW_STATS_TOKENS" not in reporting
    done = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client")
    notes = done.stdout.partition("NOTES:")[2]
    assert "Authorization: Bearer $TOKEN" in notes and "stats-tokens" in notes
    assert secret["stringData"]["stats-tokens"] not in notes
