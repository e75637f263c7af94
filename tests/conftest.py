"""Shared fixtures: a `store` run against every backend (SQLite file, PostgreSQL schema)."""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.ports.clock import Clock
from fleetforge.ports.store import Store
from tests.support import need

PG_DSN = os.environ.get("FLEETFORGE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

MakeStore = Callable[..., Store]


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now_us: int = 1_700_000_000_000_000) -> None:
        self.now = now_us

    def now_us(self) -> int:
        return self.now

    def advance(self, us: int) -> None:
        self.now += us


def redacted_dsn() -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", PG_DSN)


@functools.cache
def pg_problem() -> str | None:
    """None when PostgreSQL at PG_DSN accepts connections, else why not."""
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return type(exc).__name__
    return None


def need_postgres() -> None:
    problem = pg_problem()
    need(problem is None, f"PostgreSQL at {redacted_dsn()} ({problem})")


def unique_schema() -> str:
    return f"fft_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres":
        need_postgres()
    return name


@pytest.fixture
def make_store(backend: str, tmp_path: Path, clock: FakeClock) -> Iterator[MakeStore]:
    """Make unmigrated stores sharing one database (a file or a fresh schema); cleaned up after."""
    schema = unique_schema()
    made: list[Store] = []

    def make(*, clock: Clock = clock, **options: Any) -> Store:
        store: Store
        if backend == "sqlite":
            store = SqliteStore(tmp_path / "state.db", clock=clock, **options)
        else:
            store = PostgresStore(PG_DSN, clock=clock, schema=schema, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    if backend == "postgres":
        cleanup = PostgresStore(PG_DSN, schema=schema)
        cleanup.drop_schema()
        cleanup.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    """A migrated store."""
    s = make_store()
    s.migrate()
    return s


@pytest.fixture
def pg_store(clock: FakeClock) -> Iterator[PostgresStore]:
    """A migrated PostgreSQL store in a fresh schema (PostgreSQL-only tests)."""
    need_postgres()
    s = PostgresStore(PG_DSN, clock=clock, schema=unique_schema(), pool_size=8)
    s.migrate()
    yield s
    s.drop_schema()
    s.close()
