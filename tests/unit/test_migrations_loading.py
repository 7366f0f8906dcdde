"""Loading migration files: names, the up line, versions, and what the checksum covers."""

from __future__ import annotations

from pathlib import Path

import pytest

from queueflow.core.errors import MigrationError
from queueflow.core.migrations import default_migrations_dir, load_migrations


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_the_shipped_files_load_in_order() -> None:
    versions = [m.version for m in load_migrations(default_migrations_dir())]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("1-create.sql", "-- migrate:up\nSELECT 1;\n", "NNNN_description"),
        ("0001_create.sql", "SELECT 1;\n", "must start with '-- migrate:up'"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, name: str, text: str, problem: str) -> None:
    write(tmp_path, name, text)
    with pytest.raises(MigrationError, match=problem):
        load_migrations(tmp_path)


def test_two_files_of_one_version_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "-- migrate:up\nSELECT 1;\n")
    write(tmp_path, "0001_b.sql", "-- migrate:up\nSELECT 2;\n")
    with pytest.raises(MigrationError, match="share a version"):
        load_migrations(tmp_path)


def test_transaction_false_and_the_down_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        "0001_index.sql",
        "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (x);\n"
        "-- migrate:down\nDROP INDEX i;\n",
    )
    (m,) = load_migrations(tmp_path)
    assert not m.in_transaction
    assert "DROP INDEX" not in m.sql


def test_the_checksum_covers_what_runs_and_nothing_else(tmp_path: Path) -> None:
    path = write(tmp_path, "0001_t.sql", "-- migrate:up\n-- a table\nCREATE TABLE t (x int);\n")
    (original,) = load_migrations(tmp_path)
    path.write_text(
        "-- migrate:up\n-- the table, reworded\n\nCREATE TABLE t (x int);\n"
        "-- migrate:down\nDROP TABLE t;\n"
    )
    (commented,) = load_migrations(tmp_path)
    assert commented.checksum == original.checksum
    assert commented.legacy_checksum != original.legacy_checksum
    path.write_text("-- migrate:up\nCREATE TABLE t (x bigint);\n")
    (changed,) = load_migrations(tmp_path)
    assert changed.checksum != original.checksum
    path.write_text("-- migrate:up transaction:false\nCREATE TABLE t (x int);\n")
    (outside,) = load_migrations(tmp_path)
    assert outside.checksum != original.checksum
