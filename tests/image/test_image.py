"""The container image, built and run for real with a Docker engine.

The image is built on the local Debian base (.ci/base-image.sh, cached by the hash of its
recipe) or, without debootstrap, on the Dockerfile's default Python image; then every
service runs in it the way the chart runs its pods (read-only root, /tmp in memory, all
capabilities dropped, no privilege escalation, the image's UID or an arbitrary one with group
0) against the session's real Valkey and PostgreSQL, and `queueflow smoke` sends an event
through them. `.ci/docker-engine.sh start` starts an engine in CI; without one this skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from queueflow import __version__
from tests.conftest import scratch_database
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "queueflow:image-test"
# Measured 194.8 MB on the local bookworm base (125 MB of it the base); budget +15%.
SIZE_BUDGET_BYTES = 224_000_000
# What the chart's containerSecurityContext and /tmp emptyDir amount to (_helpers.tpl,
# _deployment.tpl); seccomp RuntimeDefault is Docker's default profile. The host's network:
# the test servers listen on loopback.
HARDENED = [
    "--read-only",
    "--tmpfs",
    "/tmp:rw,size=64m",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--network",
    "host",
]
IMAGE_USER = "10001:10001"
OPENSHIFT_USER = "1000830000:0"  # an arbitrary UID in the root group, as OpenShift assigns
STOP_TIMEOUT_S = 30


def engine_missing() -> str | None:
    if not shutil.which("docker"):
        return "docker is not installed (`.ci/docker-engine.sh start` installs docker.io)"
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "no Docker engine answers (`docker info` timed out)"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine answers (`docker info`: {why}); `.ci/docker-engine.sh start`"
    return None


if reason := engine_missing():
    pytest.skip(f"container image test: {reason}", allow_module_level=True)

# The first test pays for the builds: the base image once (~40 s), the project image each time
# its inputs change (~15 s).
pytestmark = pytest.mark.timeout(900)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


def image_id(tag: str) -> str | None:
    done = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def base_image() -> str | None:
    """QUEUEFLOW_TEST_BASE_IMAGE, else the local debootstrap base, else the Dockerfile's own."""
    if chosen := os.environ.get("QUEUEFLOW_TEST_BASE_IMAGE"):
        return chosen
    if not shutil.which("debootstrap"):
        return None
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "base-image.sh")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f".ci/base-image.sh failed\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def revision() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


@pytest.fixture(scope="module")
def image() -> dict[str, str]:
    """Build the image (the base first when needed); the previous build's images are removed."""
    base = base_image()
    build_stage = f"{IMAGE}-build"
    before = {tag: image_id(tag) for tag in (IMAGE, build_stage)}
    common = ["build", "--network", "host", "--build-arg", f"VERSION={__version__}"]
    common += ["--build-arg", f"REVISION={revision()}"]
    if base:
        common += ["--build-arg", f"PYTHON_IMAGE={base}"]
    started = time.monotonic()
    # The build stage gets a tag too, so the next run can remove what this one leaves behind.
    docker(*common, "--target", "build", "-t", build_stage, str(ROOT), timeout=900)
    docker(*common, "-t", IMAGE, str(ROOT), timeout=900)
    print(
        f"\nimage {IMAGE} on {base or 'the default base'} built in "
        f"{time.monotonic() - started:.1f} s"
    )
    for tag, old in before.items():
        if old and old != image_id(tag):
            docker("rmi", old, check=False)
    return {"base": base or "", "revision": revision()}


def test_image_is_labelled_non_root_and_within_its_size_budget(image: dict[str, str]) -> None:
    (info,) = json.loads(docker("image", "inspect", IMAGE).stdout)
    config = info["Config"]
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["queueflow"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == image["revision"]
    assert labels["org.opencontainers.image.title"] == "QueueFlow"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    print(f"\nimage size {info['Size'] / 1e6:.1f} MB (budget {SIZE_BUDGET_BYTES / 1e6:.0f} MB)")
    assert info["Size"] <= SIZE_BUDGET_BYTES, f"{info['Size'] / 1e6:.1f} MB"
    version = docker("run", "--rm", *HARDENED, IMAGE, "--version").stdout
    assert version.strip() == f"queueflow {__version__}"


def test_image_has_no_pip_and_no_build_tools(image: dict[str, str]) -> None:
    script = """
    for tool in pip pip3 gcc cc c++ g++ make ld as; do
        if command -v "$tool"; then echo "found $tool"; fi
    done
    find / -xdev \\( -name 'pip' -o -name 'pip3*' -o -name 'ensurepip' -o -name 'python-wheels' \\
        -o -name 'setuptools' -o -name 'hatchling' \\) -print 2>/dev/null | sed 's/^/found /'
    for python in python3 /usr/bin/python3 /usr/local/bin/python3; do
        if [ -x "$python" ] || command -v "$python" >/dev/null; then
            "$python" -m pip --version 2>/dev/null && echo "found pip for $python"
        fi
    done
    true
    """
    done = docker("run", "--rm", *HARDENED, "--entrypoint", "sh", IMAGE, "-c", script)
    found = [line for line in done.stdout.splitlines() if "found" in line]
    assert not found, done.stdout


@pytest.fixture
async def image_database(servers: dict[str, str]) -> AsyncIterator[str]:
    """An empty database of this test's own: `queueflow migrate` in the image fills it."""
    async with scratch_database(servers["postgres"]) as url:
        yield url


class Containers:
    """Background containers of one test, stopped with `docker stop` and removed at the end."""

    def __init__(self, tag: str, user: str) -> None:
        self.tag = tag
        self.user = user
        self.names: list[str] = []

    def run(self, *args: str, env: dict[str, str], timeout: float = 120) -> str:
        """A one-shot container (`--rm`); its output."""
        done = docker("run", "--rm", *self.flags(env), IMAGE, *args, timeout=timeout)
        return done.stdout

    def start(self, component: str, env: dict[str, str]) -> str:
        """`queueflow COMPONENT --port P` as the chart's Deployment runs it; its URL once ready."""
        port = free_port()
        name = f"qf-image-{self.tag}-{component}"
        docker("run", "-d", "--name", name, *self.flags(env), IMAGE, component, "--port", str(port))
        self.names.append(name)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            state = docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"{component} is {state}:\n{self.logs(name)}"
            assert time.monotonic() < deadline, (
                f"{component}: no 200 from /readyz\n{self.logs(name)}"
            )
            time.sleep(0.2)

    def stop(self, name: str) -> None:
        """`docker stop`: SIGTERM, then SIGKILL after the timeout; it must exit 0 before that."""
        started = time.monotonic()
        docker("stop", "--time", str(STOP_TIMEOUT_S), name, timeout=STOP_TIMEOUT_S + 30)
        took = time.monotonic() - started
        code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", f"{name} exited {code} after {took:.1f} s\n{self.logs(name)}"
        assert took < STOP_TIMEOUT_S, f"{name} took {took:.1f} s to stop"

    def logs(self, name: str) -> str:
        done = docker("logs", "--tail", "40", name, check=False)
        return done.stdout + done.stderr

    def flags(self, env: dict[str, str]) -> list[str]:
        return [*HARDENED, "--user", self.user, *[f"-e{k}={v}" for k, v in env.items()]]

    def remove_all(self) -> None:
        for name in self.names:
            docker("rm", "--force", name, check=False)


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> Iterator[Containers]:
    made = Containers(uuid.uuid4().hex[:8], request.param)
    try:
        yield made
    finally:
        made.remove_all()


@pytest.mark.parametrize("containers", [IMAGE_USER, OPENSHIFT_USER], indirect=True)
def test_services_run_in_the_image_as_the_chart_runs_them(
    image: dict[str, str], servers: dict[str, str], image_database: str, containers: Containers
) -> None:
    tag = containers.tag
    stream = {
        "QUEUEFLOW_STREAM": f"events_image_{tag}",
        "QUEUEFLOW_GROUP": f"workers_image_{tag}",
        "QUEUEFLOW_DEAD_LETTER_STREAM": f"dead_image_{tag}",
    }
    # Least privilege, as the chart gives them: each service only the URLs it uses.
    redis = {"REDIS_URL": servers["redis"]}
    database = {"DATABASE_URL": image_database}
    containers.run("migrate", env=database)  # exits 0, or docker() fails the test

    worker_env = {**redis, **database, **stream, "QUEUEFLOW_CONSUMER": f"qf-image-{tag}-worker"}
    containers.start("worker", worker_env)
    ingest = containers.start("ingest", {**redis, **stream})
    reporting = containers.start("reporting", database)

    out = containers.run(
        "smoke", "--ingest-url", ingest, "--reporting-url", reporting, "--timeout", "60", env={}
    )
    assert "queueflow smoke: ok" in out, out

    for name in list(containers.names):
        containers.stop(name)
