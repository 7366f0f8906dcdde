"""The embedded PostgreSQL started as root runs as its own unprivileged user without opening
any folder on the way to its data or binaries to other users."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import asyncpg
import pytest

from queueflow.embedded import start_postgres


@pytest.mark.skipif(os.geteuid() != 0, reason="only root starts PostgreSQL as another user")
async def test_as_root_no_folder_on_the_way_is_opened(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "pg"
    ancestors = [private, *private.parents]
    modes = {p: p.stat().st_mode for p in ancestors}
    server = start_postgres(data_dir, durable=False)
    try:
        conn = await asyncpg.connect(server.url)
        await conn.execute("CREATE TABLE kept (x int)")
        await conn.close()
        assert {p: p.stat().st_mode for p in ancestors} == modes
    finally:
        server.stop()
    # The data lives where the server's user can reach it, the data dir says where, and a
    # restart finds it again.
    staged = Path((data_dir / "pgdata-location").read_text().strip())
    assert (staged / "PG_VERSION").exists()
    server = start_postgres(data_dir, durable=False)
    try:
        conn = await asyncpg.connect(server.url)
        assert await conn.fetchval("SELECT count(*) FROM kept") == 0
        await conn.close()
    finally:
        server.stop()
    # Once its data dir is gone, the next start removes the staged copy.
    shutil.rmtree(private)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    start_postgres(other / "pg", durable=False).stop()
    assert not staged.exists()  # noqa: ASYNC240 - a test, not a server
