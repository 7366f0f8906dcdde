"""Schema migrations: numbered SQL files applied once each, in order, under an advisory lock.

Files are `NNNN_description.sql` in dbmate's format (`-- migrate:up`, optionally followed by
`-- migrate:down`, which is ignored: migrations only go forward). Each file runs in its own
transaction unless its up line says `transaction:false`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from queueflow.core.config import Settings
from queueflow.core.errors import MigrationError
from queueflow.core.store import connect

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same for every pod that migrates this database.
ADVISORY_LOCK_KEY = 0x5146_4D49  # "QFMI"
FILE_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[\w-]+)\.sql$")

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str
    checksum: str  # of what runs: the up section's statements (see statements_checksum)
    legacy_checksum: str  # of the whole file, as databases migrated before recorded it
    in_transaction: bool


def default_migrations_dir() -> Path:
    """Inside an installed wheel the files ship as package data; in a checkout, db/migrations."""
    packaged = Path(__file__).resolve().parent.parent / "migrations"
    return (
        packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "db" / "migrations"
    )


def load_migrations(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: expected NNNN_description.sql")
        text = path.read_text(encoding="utf-8")
        up, _, _down = text.partition("-- migrate:down")
        first_line = up.lstrip().splitlines()[0] if up.strip() else ""
        if not first_line.startswith("-- migrate:up"):
            raise MigrationError(f"{path.name}: must start with '-- migrate:up'")
        migrations.append(
            Migration(
                version=match["version"],
                name=match["name"],
                sql=up,
                checksum=statements_checksum(up, "transaction:false" not in first_line),
                legacy_checksum=hashlib.sha256(text.encode()).hexdigest(),
                in_transaction="transaction:false" not in first_line,
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def statements_checksum(up: str, in_transaction: bool) -> str:
    """What an applied file may not change: its up section's statements and how they run.
    Comment lines, blank lines and the (never run) down section are left out, so rewording a
    comment does not stop a deploy."""
    lines = [
        line.strip()
        for line in up.splitlines()
        if line.strip() and not line.strip().startswith("--")
    ]
    text = "\n".join([f"transaction:{str(in_transaction).lower()}", *lines])
    return hashlib.sha256(text.encode()).hexdigest()


async def apply_migrations(settings: Settings, *, attempts: int = 15) -> list[str]:
    """`queueflow migrate`, and what worker and reporting run at start unless
    QUEUEFLOW_AUTO_MIGRATE=false (when a Job or hook migrates instead)."""
    directory = (
        Path(settings.migrations_dir) if settings.migrations_dir else default_migrations_dir()
    )
    applied = await migrate(settings.database_dsn(), directory, attempts=attempts)
    log.info("schema up to date", applied=applied)
    return applied


async def migrate_at_start(settings: Settings) -> None:
    """Reporting's start-up step (QUEUEFLOW_AUTO_MIGRATE): one try. A database that is down
    is logged and served around (503 until it answers); workers migrate when it is back."""
    if not settings.auto_migrate:
        return
    try:
        await apply_migrations(settings, attempts=1)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("could not migrate at start", error=repr(exc))


async def migrate(dsn: str, directory: Path, *, attempts: int = 15) -> list[str]:
    """Apply pending migrations and return their versions; safe from many pods at once."""
    migrations = load_migrations(directory)
    conn = await connect(dsn, attempts=attempts)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            return await _apply_pending(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(CREATE_LEDGER)
    applied = {
        r["version"]: r["checksum"]
        for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
    }
    for m in migrations:
        if m.version in applied and applied[m.version] not in (m.checksum, m.legacy_checksum):
            raise MigrationError(
                f"migration {m.version}_{m.name} was changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    done = []
    for m in migrations:
        if m.version in applied:
            continue
        record = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
        if m.in_transaction:
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(record, m.version, m.name, m.checksum)
        else:
            await conn.execute(m.sql)
            await conn.execute(record, m.version, m.name, m.checksum)
        log.info("migration applied", version=m.version, name=m.name)
        done.append(m.version)
    return done
