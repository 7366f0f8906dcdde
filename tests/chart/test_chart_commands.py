"""Chart <-> program agreement: the rendered containers' exact commands, arguments,
environment and probe paths, run as local processes against real Redis and PostgreSQL.

A chart that names a flag, variable, Secret key or path the program does not have fails here,
long before a cluster would show it as a crash loop.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from queueflow.core.config import Settings, env_name, load_settings
from tests.chart.conftest import RELEASE, Render, find, one, pod_spec
from tests.conftest import scratch_database
from tests.helpers import free_port

BIN = Path(sys.executable).parent


def environment(container: dict, objects: list[dict], secrets: dict, pod: str) -> dict:
    """The container's environment as the kubelet would build it, from the rendered objects:
    envFrom first, then env in order, each value's $(VAR) expanded from those before it."""
    env = {"PATH": os.environ["PATH"]}
    for source in container.get("envFrom", []):
        config = one(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = pod
    return env


def local_command(container: dict, port: int | None = None) -> list[str]:
    command = [*container["command"], *container["args"]]
    assert command[0] == "queueflow"
    command[0] = str(BIN / "queueflow")
    if port is not None:  # every pod listens on containerPort; here each needs its own
        index = command.index("--port")
        assert int(command[index + 1]) == container["ports"][0]["containerPort"]
        command[index + 1] = str(port)
    return command


@contextlib.contextmanager
def started(command: list[str], env: dict) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        assert proc.wait(30) == 0  # a clean stop on SIGTERM, as in a rolling update


def wait_ok(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"{url}: the process exited with {proc.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{url} did not answer 200"
        time.sleep(0.1)


@pytest.fixture
async def empty_database(servers: dict[str, str]) -> AsyncIterator[str]:
    """A database with no schema: the rendered migration command has to create it."""
    async with scratch_database(servers["postgres"]) as url:
        yield url


def test_rendered_commands_run_and_agree(
    render: Render, servers: dict[str, str], empty_database: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Managed servers given as URLs: the test's own. The migration Job reads its URL from the
    # hook Secret made before install; the services from the chart's Secret.
    values = {
        "config": {"stream": f"chart_{tag}", "group": f"g_{tag}", "blockMs": 100},
        "redis": {"enabled": False},
        "externalRedis": {"url": servers["redis"]},
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": empty_database},
    }
    objects = render(values)
    secrets = {
        (secret["metadata"]["name"], k): v
        for secret in find(objects, "Secret")
        for k, v in secret["stringData"].items()
    }

    migrate = pod_spec(one(objects, "Job"))["containers"][0]
    done = subprocess.run(
        local_command(migrate), env=environment(migrate, objects, secrets, "migrate"), timeout=60
    )
    assert done.returncode == 0

    ports: dict[str, int] = {}  # Service name -> local port of the process behind it
    with contextlib.ExitStack() as stack:
        for deployment in find(objects, "Deployment"):
            name = deployment["metadata"]["name"]
            container = pod_spec(deployment)["containers"][0]
            port = free_port()
            env = environment(container, objects, secrets, f"{name}-7d9f8-x2x4q")
            proc = stack.enter_context(started(local_command(container, port), env))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                check = container[probe]["httpGet"]
                assert check["port"] == container["ports"][0]["name"]
                wait_ok(f"http://127.0.0.1:{port}{check['path']}", proc)
            labels = deployment["spec"]["template"]["metadata"]["labels"].items()
            for service in find(objects, "Service"):
                if service["spec"]["selector"].items() <= labels:
                    ports[
                        f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
                    ] = port

        # An event into ingest shows in reporting.
        ingest = f"http://127.0.0.1:{ports[f'{RELEASE}-queueflow-ingest:80']}"
        reporting = f"http://127.0.0.1:{ports[f'{RELEASE}-queueflow-reporting:80']}"
        now = datetime.now(UTC)
        event = {
            "site_id": f"chart-{tag}",
            "event_type": "page_view",
            "path": "/",
            "user_id": "u1",
            "timestamp": now.isoformat(),
        }
        assert httpx.post(f"{ingest}/event", json=event).status_code == 202
        deadline = time.monotonic() + 20
        (token,) = [v for (_, k), v in secrets.items() if k == "stats-tokens"]
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{reporting}/stats", params={"site_id": "x"}).status_code == 401
        while True:
            stats = httpx.get(
                f"{reporting}/stats", params={"site_id": f"chart-{tag}"}, headers=bearer
            ).json()
            if stats["total_views"] == 1:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)

        # The chart's `helm test` pod, its Service URLs mapped to the local processes.
        smoke = pod_spec(one(objects, "Pod", "-smoke-test"))["containers"][0]
        command = local_command(smoke)
        for i, arg in enumerate(command):
            if arg.startswith("http://"):
                command[i] = f"http://127.0.0.1:{ports[arg.removeprefix('http://')]}"
        done = subprocess.run(
            command, env=environment(smoke, objects, secrets, "smoke"), timeout=150
        )
        assert done.returncode == 0


def test_bundled_server_urls_expand_to_settings_the_program_accepts(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bundled servers the URLs are put together by $(VAR) expansion from the
    password Secret: what the kubelet makes of them must be URLs QueueFlow reads."""
    objects = render()
    (secret,) = find(objects, "Secret")
    secrets = {(secret["metadata"]["name"], k): v for k, v in secret["stringData"].items()}
    for deployment in find(objects, "Deployment"):
        container = pod_spec(deployment)["containers"][0]
        env = environment(container, objects, secrets, "pod-0")
        for name in Settings.model_fields:
            monkeypatch.delenv(env_name(name), raising=False)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = load_settings()
        if "REDIS_URL" in env:
            password = secrets[(secret["metadata"]["name"], "redis-password")]
            assert settings.redis_dsn() == (
                f"redis://:{password}@{RELEASE}-queueflow-redis.analytics.svc.cluster.local:6379/0"
            )
        if "DATABASE_URL" in env:
            assert settings.database_dsn().startswith("postgresql://queueflow:")
            assert "@qf-queueflow-postgresql.analytics.svc.cluster.local:5432/queueflow" in (
                settings.database_dsn()
            )
