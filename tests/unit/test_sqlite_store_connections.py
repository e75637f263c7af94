"""The SQLite store keeps one connection per live thread: those of threads that ended are closed, so a
process that starts threads over time (a worker per batch, a reader per tenure) does not grow."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore


def _use_in_thread(store: SqliteStore) -> sqlite3.Connection:
    used: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: used.append(store._conn()))
    t.start()
    t.join()
    return used[0]


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    first = _use_in_thread(store)
    assert store.open_connections == 2  # this thread's and the ended one's, until someone opens another
    for _ in range(20):
        _use_in_thread(store)
    assert store.open_connections == 2  # this thread's and the last ended thread's
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")  # closed
    with store.transaction() as tx:  # this thread's connection is untouched
        tx.c.execute("SELECT 1")
    store.close()
    assert store.open_connections == 0


def test_live_threads_keep_their_connections(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    release = threading.Event()
    ready = threading.Barrier(4)
    failed: list[BaseException] = []

    def hold() -> None:
        conn = store._conn()
        ready.wait()
        release.wait()
        try:
            conn.execute("SELECT 1")  # still open
        except sqlite3.Error as exc:
            failed.append(exc)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=30)
        _use_in_thread(store)
        assert store.open_connections >= 4  # the main thread's and the three live ones (plus the ended one)
    finally:
        release.set()
        for t in threads:
            t.join(timeout=30)
    assert not failed
    store.close()
