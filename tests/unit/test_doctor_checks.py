"""The state store check's advice fits the backend and the error."""

from __future__ import annotations

from fleetforge.core.diagnosis import Verdict, store_failure


def test_a_corrupt_sqlite_file_is_named_as_such_with_what_to_do() -> None:
    check = store_failure("sqlite", "/d/state.db", "cannot open SQLite store at /d/state.db: file is not a database")
    assert check.verdict is Verdict.FAIL
    assert check.detail.startswith("/d/state.db is not a valid SQLite database")
    assert "move /d/state.db aside" in check.fix and "host" not in check.fix


def test_other_sqlite_failures_point_at_permissions_and_space() -> None:
    check = store_failure("sqlite", "/d/state.db", "unable to open database file")
    assert "readable and writable" in check.fix and "host" not in check.fix


def test_server_failures_keep_the_connection_advice() -> None:
    check = store_failure("postgres", "host=h dbname=x", "connection refused")
    assert "(host, port, database, user)" in check.fix
