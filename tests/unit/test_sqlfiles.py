"""The one SQL loader and migrator: checksums recorded, a changed applied migration refused (SQLite, no services)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from fleetforge.adapters.stores import sqlfiles
from fleetforge.adapters.stores.sqlfiles import Migration, MigrationChanged
from fleetforge.adapters.stores.sqlite.store import SqliteStore

PACKAGES = [
    "fleetforge.adapters.stores.sqlite",
    "fleetforge.adapters.stores.postgres",
    "fleetforge.adapters.readers.clickhouse",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_store_ships_numbered_migrations_from_one(package: str) -> None:
    found = sqlfiles.migrations(package)
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(m.source.endswith(f"migrations/{m.label}.sql") and m.sql for m in found)


def test_migrate_records_a_checksum_per_migration(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    recorded = dict(sqlite3.connect(tmp_path / "s.db").execute("SELECT version, checksum FROM schema_migrations"))
    assert recorded == {m.version: m.checksum for m in sqlfiles.migrations("fleetforge.adapters.stores.sqlite")}


def test_a_changed_applied_migration_stops_the_store_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteStore(tmp_path / "s.db").migrate()
    real = sqlfiles.migrations

    def edited(package: str) -> list[Migration]:
        found = real(package)
        return [dataclasses.replace(found[0], sql=found[0].sql + "\n-- edited\n"), *found[1:]]

    monkeypatch.setattr(sqlfiles, "migrations", edited)
    with pytest.raises(MigrationChanged, match=r"migration file .*sqlite/migrations/0001_init\.sql changed after it "
                                                r"was applied .*new migration"):
        SqliteStore(tmp_path / "s.db").migrate()


def test_a_store_migrated_before_checksums_gets_them_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).migrate()
    with sqlite3.connect(path) as conn:  # the table as it was before the checksum column
        conn.executescript("CREATE TABLE old AS SELECT version, name, applied_us FROM schema_migrations;"
                           "DROP TABLE schema_migrations; ALTER TABLE old RENAME TO schema_migrations;")
    store = SqliteStore(path)
    assert store.migrate() == sqlfiles.migrations("fleetforge.adapters.stores.sqlite")[-1].version
    rows = sqlite3.connect(path).execute("SELECT checksum FROM schema_migrations").fetchall()
    assert rows and all(len(c) == 16 for (c,) in rows)


def test_a_new_migration_is_applied_after_the_others_are_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteStore(tmp_path / "s.db").migrate()
    real = sqlfiles.migrations
    sql = "CREATE TABLE extra (x INTEGER); CREATE INDEX extra_x ON extra (x);"
    extra = Migration(99, "extra", sql, "x/0099_extra.sql")
    monkeypatch.setattr(sqlfiles, "migrations", lambda package: [*real(package), extra])
    assert SqliteStore(tmp_path / "s.db").migrate() == 99


def test_split_statements_keeps_quoted_semicolons() -> None:
    assert sqlfiles.split_statements("-- c; x\nSELECT 'a;b'; /* ; */ SELECT 2;") == ["SELECT 'a;b'", "SELECT 2"]
