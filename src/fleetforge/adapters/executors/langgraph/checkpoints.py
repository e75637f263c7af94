"""Where graph steps keep their LangGraph checkpoints, and how retention deletes them.

Checkpoints live in the store's database with LangGraph's own savers: the SQLite file, or the PostgreSQL
database with the store's schema first on the saver connections' `search_path`. One thread per graph
step, `fleetforge:<run id>:<step id>`. `GraphCheckpoints` deletes the threads of runs retention deletes,
through the savers' own `delete_thread`/`prune` API. Importing this module does not import LangGraph.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from fleetforge.domain.errors import StoreError
from fleetforge.domain.secrets import redact_text
from fleetforge.ports.retention import RetentionStore

__all__ = ["GraphCheckpoints", "checkpointer", "is_postgres", "thread_id"]

log = logging.getLogger("fleetforge.retention")


def thread_id(run_id: str, step_id: str) -> str:
    """The checkpoint thread of a graph step: every attempt continues it."""
    return f"fleetforge:{run_id}:{step_id}"


def is_postgres(database: str) -> bool:
    """Whether `database` is a PostgreSQL DSN (else a SQLite file path)."""
    return database.startswith(("postgres://", "postgresql://")) or "dbname=" in database


def _search_path(schema: str) -> Any:
    from psycopg import sql

    return sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))


@contextlib.asynccontextmanager
async def checkpointer(database: str, schema: str = "") -> AsyncIterator[Any]:
    """LangGraph's async saver on the store's database (tables created when missing); `schema`: the
    PostgreSQL store's schema, where its tables go."""
    if is_postgres(database):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row

        async with await AsyncConnection.connect(database, autocommit=True, prepare_threshold=0,
                                                 row_factory=dict_row) as conn:
            if schema:
                await conn.execute(_search_path(schema))
            pg = AsyncPostgresSaver(conn)  # type: ignore[arg-type]
            await pg.setup()
            yield pg
        return
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with aiosqlite.connect(database, timeout=60) as lite:
        yield AsyncSqliteSaver(lite)


@contextlib.contextmanager
def _saver(database: str, schema: str) -> Iterator[Any]:
    """LangGraph's sync saver on the store's database, its tables set up."""
    if is_postgres(database):
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg import Connection
        from psycopg.rows import dict_row

        with Connection.connect(database, autocommit=True, prepare_threshold=0, row_factory=dict_row) as conn:
            if schema:
                conn.execute(_search_path(schema))
            pg = PostgresSaver(conn)  # type: ignore[arg-type]
            pg.setup()
            yield pg
        return
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    with contextlib.closing(sqlite3.connect(database, timeout=60, check_same_thread=False)) as lite:
        lite.execute("PRAGMA synchronous=NORMAL")
        saver = SqliteSaver(lite)
        saver.setup()
        yield saver


class GraphCheckpoints:
    """Retention's `RunCheckpoints` for graph steps: the checkpoint threads of runs about to be deleted.

    Without the langgraph extra nothing is deleted (a warning says how many threads are left behind)."""

    def __init__(self, store: RetentionStore, database: str, schema: str = "") -> None:
        self.store = store
        self.database = database
        self.schema = schema

    @classmethod
    def for_store(cls, store: RetentionStore) -> GraphCheckpoints:
        """The checkpoints beside `store` (its `database` and, on PostgreSQL, its `schema`)."""
        return cls(store, str(getattr(store, "database", "")), str(getattr(store, "schema", "") or ""))

    def delete_for_runs(self, run_ids: Sequence[str]) -> int:
        threads = [thread_id(r, s) for r, s in self.store.graph_steps(run_ids)]
        if not threads:
            return 0
        try:
            with _saver(self.database, self.schema) as saver:
                try:  # PostgreSQL: every thread in one transaction
                    saver.prune(threads, strategy="delete")
                except NotImplementedError:  # SQLite: one thread at a time
                    for t in threads:
                        saver.delete_thread(t)
        except ImportError as exc:
            log.warning("%d LangGraph checkpoint threads of pruned runs are kept: %s is not installed here "
                        "(pip install 'fleetforge[langgraph]' where retention runs)", len(threads), exc.name)
            return 0
        except Exception as exc:
            detail = redact_text(f"{type(exc).__name__}: {exc}", [self.database])
            raise StoreError(f"deleting LangGraph checkpoints of pruned runs failed ({detail}); the runs are "
                             "kept until it succeeds") from None
        return len(threads)
