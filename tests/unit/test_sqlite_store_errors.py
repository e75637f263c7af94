"""SQLite store failures surface as one clear error: a full disk names the folder and the fix, and the
rollback after a failed commit never hides the real error."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.errors import StoreError, StoreFull, StoreUnavailable


def _fill_up(store: SqliteStore) -> None:
    """Cap the database at its current size, so that the next growing write fails with SQLITE_FULL."""
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_disk_is_one_clear_error_not_a_rollback_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    _fill_up(store)
    with pytest.raises(StoreFull) as info, store.transaction() as tx:
        tx.c.execute("CREATE TABLE filler (x BLOB)")
        tx.c.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4096,) for _ in range(64)])
    message = str(info.value)
    assert message.startswith(f"disk full at {tmp_path}: free space or point --data-dir elsewhere (")
    assert "database or disk is full" in message
    assert "cannot rollback" not in message
    assert not isinstance(info.value, StoreError)  # workers must not retry it forever
    assert not store._conn().in_transaction
    with store.transaction() as tx:  # the store still works for what fits
        tx.c.execute("SELECT 1")
    store.close()


def test_other_sqlite_errors_stay_store_errors_and_roll_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    with pytest.raises(StoreError, match="SQLite transaction failed: no such table: nope"), store.transaction() as tx:
        tx.c.execute("SELECT * FROM nope")
    assert not store._conn().in_transaction
    store.close()


def test_rollback_after_sqlite_ended_the_transaction_is_silent(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    with pytest.raises(StoreError, match="SQLite transaction failed"), store.transaction() as tx:
        tx.c.execute("ROLLBACK")  # as SQLite does by itself after some errors
        raise sqlite3.OperationalError("database or disk is fine, but something failed")
    store.close()


def test_a_writer_waits_for_another_writers_lock_then_commits(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", busy_timeout_s=10)
    store.migrate()
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()
    started = time.monotonic()
    with store.transaction() as tx:
        waited = time.monotonic() - started
        tx.c.execute("CREATE TABLE after_wait (x INTEGER)")
    release.join()
    assert 0.25 <= waited < 5
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000  # other statements keep it
    other.close()
    store.close()


def test_a_writer_gives_up_after_the_busy_timeout_with_a_clear_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", busy_timeout_s=0.2)
    store.migrate()
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="is not writable: database is locked"), store.transaction():
        pass
    assert 0.2 <= time.monotonic() - started < 3
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 200
    other.execute("ROLLBACK")
    other.close()
    store.close()
