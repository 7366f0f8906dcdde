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
# The install scenarios, as the chart keeps them (charts/queueflow/ci/<name>-values.yaml).
SCENARIOS: dict[str, dict] = {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text()) or {}
    for path in sorted((CHART / "ci").glob("*-values.yaml"))
}

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
        values: dict | None = None,
        *,
        api_versions: tuple[str, ...] = (),
        kube: str = "1.33.0",
        upgrade: bool = False,
        release: str = RELEASE,
    ) -> list[dict]:
        extra = [a for api in api_versions for a in ("--api-versions", api)]
        if upgrade:
            extra.append("--is-upgrade")
        done = run_helm(
            helm, "template", release, str(CHART), "--kube-version", kube, *extra, values=values
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


def hook_phases(obj: dict) -> list[str]:
    """The Helm hook phases an object runs in; [] for an ordinary release object."""
    value = obj["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return [phase for phase in value.split(",") if phase]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}
