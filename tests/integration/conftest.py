"""Fixtures for tests that drive the worker's parts in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from queueflow.core.config import Settings
from queueflow.core.store import EventStore, create_pool
from queueflow.core.stream import EventStream, connect


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[EventStream, EventStore]]:
    client = connect(settings.redis_dsn(), timeout_s=5)
    pool = await create_pool(settings.database_dsn(), max_size=2)
    yield EventStream(client, settings), EventStore(pool)
    await pool.close()
    await client.aclose()
