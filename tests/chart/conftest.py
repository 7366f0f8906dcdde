"""The chart rendered by a real helm, as the tests in this folder read it."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.chart.tools import helm_binary

CHART = Path(__file__).resolve().parents[2] / "charts" / "queueflow"
RELEASE = "qf"
NAMESPACE = "analytics"

Render = Callable[..., list[dict]]


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


def run_helm(helm: Path, *args: str, values: dict | None = None) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        return subprocess.run(
            [str(helm), *args, "--namespace", NAMESPACE, "-f", file.name],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """Objects of `helm template` for these values; api_versions are the extra APIs the
    cluster is said to serve (as `--api-versions`)."""

    def render(
        values: dict | None = None, *, api_versions: tuple[str, ...] = (), kube: str = "1.33.0"
    ) -> list[dict]:
        extra = [a for api in api_versions for a in ("--api-versions", api)]
        done = run_helm(
            helm, "template", RELEASE, str(CHART), "--kube-version", kube, *extra, values=values
        )
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return render


def find(objects: list[dict], kind: str, name_suffix: str = "") -> list[dict]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]


def one(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    (found,) = find(objects, kind, name_suffix)
    return found


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
