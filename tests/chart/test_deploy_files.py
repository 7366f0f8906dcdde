"""The Dockerfile, docker-compose.yml and skaffold.yaml, read as the tools would read them;
`docker compose config` also checks the Compose file where the plugin is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from queueflow.cli import build_parser
from queueflow.core.config import Settings, env_name
from tests.chart.conftest import CHART, run_helm

ROOT = CHART.parents[1]
QUEUEFLOW_SERVICES = ("migrate", "ingest", "reporting", "worker")


def stages(dockerfile: str) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    lines = dockerfile.replace("\\\n", " ").splitlines()
    result: list[list[str]] = []
    for line in (raw.strip() for raw in lines):
        if line.startswith("FROM "):
            result.append([])
        if line and not line.startswith("#") and result:
            result[-1].append(line)
    return result


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1))
    build, final = stages(text)
    assert build[0] == "FROM ${PYTHON_IMAGE} AS build"
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    # `python3`, never `python`: a Debian base (.ci/base-image.sh) has no `python` command.
    assert not any(re.search(r"(^|\s)python(\s|$)", line) for line in build + final)
    assert not any("apt-get" in line or "pip install" in line for line in final)
    assert "COPY --from=build /opt/queueflow /opt/queueflow" in final
    user = next(line for line in final if line.startswith("USER "))
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert 'ENTRYPOINT ["queueflow"]' in final
    labels = " ".join(line for line in final if line.startswith("LABEL "))
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels
    assert {"ARG VERSION=dev", "ARG REVISION=unknown"} <= set(final)
    # Dependencies install, hash-checked and as wheels only, before the sources are copied:
    # their layer survives code changes.
    install = next(i for i, line in enumerate(build) if "-r requirements.lock" in line)
    assert "--require-hashes" in build[install] and "--only-binary :all:" in build[install]
    assert install < build.index("COPY services ./services")
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"]  # everything out, then named paths in
    assert {"!requirements.lock", "!requirements-build.lock"} <= set(ignored)


def locked(path: Path) -> dict[str, str]:
    """Name -> version of each requirement in a hashed lock file, each checked to be pinned."""
    pins = {}
    for entry in path.read_text().replace("\\\n", " ").splitlines():
        if entry.strip() and not entry.lstrip().startswith("#"):
            requirement, _, options = entry.partition(" --hash=")
            name, _, version = requirement.split(";")[0].strip().partition("==")
            assert version and options.startswith("sha256:"), entry
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_files_pin_what_pyproject_asks_for() -> None:
    """requirements.lock covers every runtime dependency within its range (`make lock` after
    changing pyproject.toml), and requirements-build.lock the build backend."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for lock, wanted in (
        ("requirements.lock", project["project"]["dependencies"]),
        ("requirements-build.lock", project["build-system"]["requires"]),
    ):
        pins = locked(ROOT / lock)
        for requirement in map(Requirement, wanted):
            version = pins.get(canonicalize_name(requirement.name))
            assert version, f"{lock} lacks {requirement.name}: run `make lock`"
            assert requirement.specifier.contains(version, prereleases=True), (lock, requirement)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_run_real_commands_with_known_settings() -> None:
    services = compose()["services"]
    fields = {env_name(name) for name in Settings.model_fields}
    for name in QUEUEFLOW_SERVICES:
        service = services[name]
        args = build_parser().parse_args(service["command"])  # exits on an unknown flag
        assert args.command == name
        env = service["environment"]
        assert {"REDIS_URL", "DATABASE_URL"} <= env.keys()
        assert env.keys() <= fields
        assert service["read_only"] is True


def test_compose_worker_scales_and_starts_in_order() -> None:
    services = compose()["services"]
    worker = services["worker"]
    # --scale worker=3 needs no fixed name or host port; the consumer is the hostname.
    assert "container_name" not in worker and "ports" not in worker
    assert "QUEUEFLOW_CONSUMER" not in worker["environment"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    assert services["postgres"]["volumes"] and services["redis"]["volumes"]
    for name in ("redis", "postgres", "ingest", "reporting", "worker"):
        assert services[name]["healthcheck"]["test"], name


@pytest.mark.skipif(
    not shutil.which("docker")
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed",
)
def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_skaffold_deploys_this_chart_and_forwards_to_its_services(helm: Path) -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    (artifact,) = config["build"]["artifacts"]
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]) == CHART
    assert (ROOT / artifact["docker"]["dockerfile"]).exists()
    image = artifact["image"]
    assert release["setValueTemplates"] == {
        "image.registry": "",  # IMAGE_REPO is the whole name, registry included
        "image.repository": f"{{{{.IMAGE_REPO_{image}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{image}}}}}",
    }
    (profile,) = config["profiles"]
    values: dict = {}
    for dotted, value in profile["patches"][0]["value"].items():
        *path, last = dotted.split(".")
        node = values
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    done = run_helm(helm, "template", release["name"], str(CHART), values=values)
    assert done.returncode == 0, done.stderr  # the profile's values pass the schema
    services = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(done.stdout)
        if d and d["kind"] == "Service"
    }
    for forward in config["portForward"]:
        ports = [p["port"] for p in services[forward["resourceName"]]["spec"]["ports"]]
        assert forward["port"] in ports
