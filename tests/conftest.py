"""Session fixtures: real Valkey and PostgreSQL servers (from the wheels, or REDIS_URL /
DATABASE_URL), a migrated template database, and per-test clean state."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis

from queueflow.core.config import Settings, load_settings
from queueflow.core.migrations import default_migrations_dir, migrate
from queueflow.embedded import start_postgres, start_valkey
from tests.redis_cluster import MISSING, RedisClusterNodes

TEMPLATE_DB = "queueflow_test_template"


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """URLs of a Redis-compatible server and a PostgreSQL server for the whole session."""
    started = []
    redis_url = os.environ.get("REDIS_URL")
    database_url = os.environ.get("DATABASE_URL")
    base = tmp_path_factory.mktemp("servers")
    try:
        if not redis_url:
            valkey = start_valkey(base / "valkey")
            started.append(valkey)
            redis_url = valkey.url
        if not database_url:
            postgres = start_postgres(base / "postgres", durable=False)
            started.append(postgres)
            database_url = postgres.url
        yield {"redis": redis_url, "postgres": database_url}
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster (3 primaries, 3 replicas) for the whole session."""
    if MISSING:
        pytest.skip(MISSING)
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield nodes.start()
    finally:
        nodes.stop()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def template_database(servers: dict[str, str]) -> str:
    """A database migrated once; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    admin = await asyncpg.connect(servers["postgres"])
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    url = with_database(servers["postgres"], TEMPLATE_DB)
    await migrate(url, default_migrations_dir())
    return url


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, template: str | None = None) -> AsyncIterator[str]:
    """A database of its own (a copy of `template`, or empty), dropped afterwards."""
    name = f"qf_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
        yield with_database(server_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(servers: dict[str, str], template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    async with scratch_database(servers["postgres"], TEMPLATE_DB) as url:
        yield url


@pytest.fixture
def settings(servers: dict[str, str], database_url: str) -> Settings:
    """Settings pointing at the session's servers, with stream names of this test's own."""
    tag = uuid.uuid4().hex[:10]
    return load_settings(
        redis_url=servers["redis"],
        database_url=database_url,
        stream=f"events_{tag}",
        group=f"workers_{tag}",
        dead_letter_stream=f"dead_{tag}",
        consumer=f"test-{tag}",
        block_ms=100,
    )


@pytest.fixture
def cluster_settings(redis_cluster: RedisClusterNodes, settings: Settings) -> Settings:
    """This test's settings on the Redis Cluster, the stream in 4 partitions (slots on each
    of the 3 primaries)."""
    return settings.model_copy(
        update={"redis_url": redis_cluster.url, "redis_cluster": True, "stream_partitions": 4}
    )


@pytest.fixture
async def redis_client(servers: dict[str, str]) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(servers["redis"])
    yield client
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]
