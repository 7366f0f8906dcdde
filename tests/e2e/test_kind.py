"""End to end on a real Kubernetes: a kind cluster, the image built and loaded, the chart
installed with three workers, a workload sent while a worker pod is killed, exact totals.

Needs Docker (a running engine) and kind; run with `make e2e`. Elsewhere it skips, saying why.
helm and kubectl come from tests/chart/tools.py, like the offline chart tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chart.tools import binary
from tests.helpers import expected_stats, free_port, send, workload

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "queueflow-e2e"
NAMESPACE = "queueflow-e2e"
RELEASE = "qf"
IMAGE = "queueflow:e2e"


def missing() -> str | None:
    if not shutil.which("docker"):
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    if not shutil.which("kind"):
        return "kind is not installed (https://kind.sigs.k8s.io)"
    return None


pytestmark = pytest.mark.e2e
if reason := missing():
    pytest.skip(f"kind end-to-end test: {reason}", allow_module_level=True)


def run(*command: str, timeout: float = 900) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run(
        "kind",
        "create",
        "cluster",
        "--name",
        CLUSTER,
        "--kubeconfig",
        str(kubeconfig),
        "--wait",
        "180s",
    )
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        run("docker", "build", "-t", IMAGE, str(ROOT))
        run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        yield {"helm": str(binary("helm")), "kubectl": str(binary("kubectl"))}
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], capture_output=True)
        os.environ.pop("KUBECONFIG", None)


@pytest.fixture(scope="module")
def release(cluster: dict[str, str]) -> dict[str, str]:
    repository, tag = IMAGE.split(":")
    settings = {
        "image.registry": "",
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "ingest.autoscaling.enabled": "false",
        "ingest.replicaCount": "1",
        "worker.autoscaling.enabled": "false",
        "worker.replicaCount": "3",
        "config.claimIdleMs": "5000",  # a killed worker's entries are reclaimed within seconds
        "redis.persistence.size": "1Gi",
        "postgresql.persistence.size": "1Gi",
    }
    run(
        cluster["helm"],
        "install",
        RELEASE,
        str(ROOT / "charts" / "queueflow"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "10m",
        *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")],
    )
    return cluster


@contextlib.contextmanager
def port_forward(kubectl: str, service: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [kubectl, "-n", NAMESPACE, "port-forward", f"svc/{service}", f"{port}:80"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"port-forward to {service} never answered"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()


def worker_pods(kubectl: str) -> list[str]:
    out = run(
        kubectl,
        "-n",
        NAMESPACE,
        "get",
        "pods",
        "-o",
        "json",
        "-l",
        "app.kubernetes.io/component=worker",
    )
    return [p["metadata"]["name"] for p in json.loads(out)["items"]]


def test_events_through_the_cluster_are_counted_exactly_despite_a_killed_worker(
    release: dict[str, str],
) -> None:
    kubectl = release["kubectl"]
    assert len(worker_pods(kubectl)) == 3
    events = workload(30_000, seed=11)
    with (
        port_forward(kubectl, f"{RELEASE}-queueflow-ingest") as ingest,
        port_forward(kubectl, f"{RELEASE}-queueflow-reporting") as reporting,
    ):
        sender = threading.Thread(target=send, args=(ingest, events))
        sender.start()
        time.sleep(3)  # mid-drain: kill one worker without letting it finish its batch
        victim = worker_pods(kubectl)[0]
        run(kubectl, "-n", NAMESPACE, "delete", "pod", victim, "--grace-period=0", "--force")
        sender.join()

        expected = expected_stats(events)
        deadline = time.monotonic() + 180
        while True:
            actual = {
                (site, day): _stats(reporting, site, day.isoformat()) for site, day in expected
            }
            if actual == expected:
                break
            assert time.monotonic() < deadline, "totals never became exact"
            time.sleep(2)
    run(release["helm"], "test", RELEASE, "--namespace", NAMESPACE, "--timeout", "5m")


def _stats(url: str, site: str, day: str) -> dict:
    reply = httpx.get(
        f"{url}/stats", params={"site_id": site, "date": day, "limit": 1000}, timeout=10
    ).json()
    return {k: reply[k] for k in ("total_views", "unique_users", "top_paths")}
