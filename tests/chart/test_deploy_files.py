"""The Dockerfile, docker-compose.yml and skaffold.yaml, read as the tools would read them;
`docker compose config` also checks the Compose file where the plugin is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    assert not any("apt-get" in line or "pip install" in line for line in final)
    assert "COPY --from=build /opt/queueflow /opt/queueflow" in final
    user = next(line for line in final if line.startswith("USER "))
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["runAsUser"] == int(uid)
    assert 'ENTRYPOINT ["queueflow"]' in final
    # Dependencies install before the sources are copied: their layer survives code changes.
    install = next(i for i, line in enumerate(build) if "pip install -r requirements.txt" in line)
    assert install < build.index("COPY services ./services")
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"]  # everything out, then named paths in


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
