"""SQLite state store (embedded default): WAL, one connection per thread, `BEGIN IMMEDIATE` writes.

SQLite serializes writers, so outbox sequence order is commit order and readers need no gap guard.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fleetforge.adapters.stores import rows, sqlfiles, token_rows
from fleetforge.adapters.stores.sqlfiles import Migration, load_queries
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import StoreError, StoreFull, StoreUnavailable
from fleetforge.domain.models import BudgetRow, RunRow, StepRow
from fleetforge.domain.tokens import TokenRow
from fleetforge.ports.clock import Clock, SystemClock
from fleetforge.ports.retention import ReaderCursor
from fleetforge.ports.store import AttemptRow, Completion, DecisionRow, OutboxPosition, OutboxRecord, RunOrigin

__all__ = ["SqliteStore"]

Q = load_queries("fleetforge.adapters.stores.sqlite")
log = logging.getLogger("fleetforge.store.sqlite")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any: SQLite ends it by itself on some errors (a full disk),
    and a second error from ROLLBACK must not hide the first one."""
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _nearly_full(folder: Path) -> bool:
    """True when `folder`'s file system has under 1 MiB free (SQLite then reports a WAL write as an I/O error)."""
    try:
        return shutil.disk_usage(folder).free < 1024 * 1024
    except OSError:
        return False


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self.c = conn
        self.clock = clock
        self.ready = False

    def notify_ready(self) -> None:
        self.ready = True

    def insert_run(self, run: RunRow) -> None:
        self.c.execute(Q["insert_run"], rows.run_params(run))

    def claim_idempotency_key(self, key: str, run_id: str, now_us: int) -> str:
        self.c.execute(Q["claim_idempotency_key"], (key, run_id, now_us))
        return str(self.c.execute(Q["select_idempotency_key"], (key,)).fetchone()[0])

    def insert_steps(self, steps: Sequence[StepRow], deps: Sequence[tuple[str, str, str]]) -> None:
        self.c.executemany(Q["insert_step"], [rows.step_params(s) for s in steps])
        self.c.executemany(Q["insert_dep"], deps)

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        out: dict[str, RunRow] = {}
        for rid in dict.fromkeys(run_ids):
            row = self.c.execute(Q["select_run"], (rid,)).fetchone()
            if row is not None:
                out[rid] = rows.run_from_row(tuple(row))
        return out

    def reread_runs(self, runs: Sequence[RunRow]) -> dict[str, RunRow]:
        out: dict[str, RunRow] = {}
        for r in {r.id: r for r in runs}.values():
            state = self.c.execute(Q["select_run_state"], (r.id,)).fetchone()
            if state is not None:
                out[r.id] = rows.run_with_state(r, *state)
        return out

    def update_runs(self, runs: Sequence[RunRow]) -> None:
        self.c.executemany(
            Q["update_run"], [rows.run_update_params(r) for r in runs]
        )

    def get_steps(self, run_id: str) -> list[StepRow]:
        return [rows.step_from_row(r) for r in self.c.execute(Q["select_steps_of_run"], (run_id,))]

    def lock_ready_steps(self, now_us: int, limit: int) -> list[StepRow]:
        return [rows.step_from_row(r) for r in self.c.execute(Q["ready_steps"], (now_us, limit))]

    def lock_ready(self, now_us: int, limit: int) -> tuple[list[StepRow], dict[str, RunRow]]:
        steps = self.lock_ready_steps(now_us, limit)
        return steps, self.get_runs([s.run_id for s in steps])

    def lock_for_claim(self, scopes: Sequence[str], if_limited: Sequence[str],
                       runs: Sequence[RunRow]) -> tuple[dict[str, BudgetRow], dict[str, RunRow]]:
        return self.lock_budgets(scopes, if_limited=if_limited), self.reread_runs(runs)

    def lock_steps(self, keys: Sequence[tuple[str, str]]) -> list[StepRow]:
        found = (self.c.execute(Q["select_step"], k).fetchone() for k in dict.fromkeys(keys))
        return [rows.step_from_row(r) for r in found if r is not None]

    def lock_expired_leases(self, now_us: int, limit: int) -> list[StepRow]:
        return [rows.step_from_row(r) for r in self.c.execute(Q["expired_leases"], (now_us, limit))]

    def lock_expired_approvals(self, now_us: int, limit: int) -> list[StepRow]:
        return [rows.step_from_row(r) for r in self.c.execute(Q["expired_approvals"], (now_us, limit))]

    def lock_open_steps(self, run_ids: Sequence[str]) -> list[StepRow]:
        return [
            rows.step_from_row(r)
            for rid in dict.fromkeys(run_ids)
            for r in self.c.execute(Q["open_steps_of_run"], (rid,))
        ]

    def lock_for_completion(self, run_ids: Sequence[str], runs: Sequence[RunRow], scopes: Sequence[str],
                            if_limited: Sequence[str], steps_of: Sequence[str] = ()) -> Completion:
        return (self.lock_open_steps(run_ids), self.reread_runs(runs),
                self.lock_budgets(scopes, if_limited=if_limited), {rid: self.get_steps(rid) for rid in steps_of},
                {rid: [(str(a), str(b)) for a, b in self.c.execute(Q["select_deps_of_run"], (rid,))]
                 for rid in dict.fromkeys(steps_of)})

    def update_steps(self, steps: Sequence[StepRow]) -> None:
        self.c.executemany(Q["update_step"], [rows.step_update_params(s) for s in steps])

    def release_dependents(self, done: Sequence[tuple[str, str]]) -> list[StepRow]:
        ready: list[StepRow] = []
        for key in done:
            for r in self.c.execute(Q["release_dependents"], key).fetchall():
                step = rows.step_from_row(r)
                if step.deps_remaining == 0:
                    ready.append(step)
        return ready

    def lock_budgets(self, scopes: Sequence[str], *, if_limited: Sequence[str] = ()) -> dict[str, BudgetRow]:
        optional = set(if_limited)  # SQLite has no row locks: the write transaction holds the file
        out: dict[str, BudgetRow] = {}
        for scope in dict.fromkeys(scopes):
            row = self.c.execute(Q["select_budget"], (scope,)).fetchone()
            if row is not None:
                budget = rows.budget_from_row(tuple(row))
                if scope not in optional or budget.tokens_limit is not None or budget.cost_limit_micros is not None:
                    out[scope] = budget
        return out

    def ensure_budgets(self, budgets: Sequence[BudgetRow]) -> None:
        self.c.executemany(Q["ensure_budget"], [rows.budget_params(b) for b in budgets])

    def upsert_budgets(self, budgets: Sequence[BudgetRow]) -> None:
        self.c.executemany(Q["upsert_budget"], [rows.budget_params(b) for b in budgets])

    def insert_attempts(self, attempts: Sequence[AttemptRow]) -> None:
        self.c.executemany(Q["insert_attempt"], [rows.attempt_params(a) for a in attempts])

    def finish_attempts(self, attempts: Sequence[AttemptRow]) -> None:
        self.c.executemany(Q["finish_attempt"], [rows.attempt_finish_params(a) for a in attempts])

    def insert_decisions(self, decisions: Sequence[DecisionRow]) -> None:
        self.c.executemany(Q["insert_decision"], [rows.decision_params(d) for d in decisions])

    def insert_origin(self, origin: RunOrigin) -> None:
        self.c.execute(Q["insert_origin"], rows.origin_params(origin))

    def append_events(self, events: Sequence[Envelope]) -> None:
        now = self.clock.now_us()
        self.c.executemany(
            Q["insert_event"], [(e.id, str(e.kind), e.run_id, e.to_json(), now) for e in events]
        )


class SqliteStore:
    """The embedded store at `path` (a file; created with its folder on first use)."""

    backend = "sqlite"

    def __init__(self, path: str | Path, *, clock: Clock | None = None, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.clock = clock or SystemClock()
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: dict[threading.Thread, sqlite3.Connection] = {}  # per thread, closed once it ended
        self._lock = threading.Lock()
        self._wakes: list[Callable[[], None]] = []

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                conn.row_factory = sqlite3.Row
                self._when_free(conn, "PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"cannot open SQLite store at {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._close_orphans()
                self._all[threading.current_thread()] = conn
        return conn

    def _close_orphans(self) -> None:
        """Close the connections of threads that ended (each holds a page cache of up to 2 MiB): a process
        that starts threads over time, e.g. a worker per batch, keeps one connection per live thread."""
        for thread in [t for t in self._all if not t.is_alive()]:
            self._all.pop(thread).close()

    @property
    def database(self) -> str:
        """The file's path (for components that keep their own tables beside the runs, such as graph
        checkpoints)."""
        return str(self.path)

    @property
    def open_connections(self) -> int:
        """Connections held now (one per live thread that used the store, closed when the thread ended
        and another opened one)."""
        with self._lock:
            return len(self._all)

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        conn = self._conn()
        try:
            self._when_free(conn, "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path} is not writable: {exc}") from exc
        tx = _SqliteTx(conn, self.clock)
        try:
            yield tx
        except sqlite3.Error as exc:
            _rollback(conn)
            raise self._failed("SQLite transaction failed", exc) from exc
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise self._failed("commit failed", exc) from exc
        if tx.ready:
            for wake in list(self._wakes):
                try:
                    wake()
                except Exception:  # committed already: a subscriber's failure is not the transaction's
                    log.exception("wake-up callback failed")

    def _when_free(self, conn: sqlite3.Connection, statement: str) -> None:
        """Run `statement` (BEGIN IMMEDIATE, or the switch to WAL), trying again every 100 us while another
        writer holds the lock, up to the busy timeout. SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms,
        long past a transaction of this store that lasts well under one (and a waiter that backs off
        further each time loses the lock to the writer that keeps it busy); it is not called at all when
        a connection that reads wants to write. Every other statement keeps SQLite's handler."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            deadline = 0.0
            while True:
                try:
                    conn.execute(statement)
                    return
                except sqlite3.OperationalError as exc:
                    now = time.monotonic()
                    deadline = deadline or now + self._busy_timeout_s
                    if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY or now >= deadline:
                        raise
                time.sleep(100e-6)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")

    def on_ready(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Wake-ups within this process (workers of other processes find new steps by polling)."""
        with self._lock:
            self._wakes.append(wake)

        def stop() -> None:
            with self._lock, suppress(ValueError):
                self._wakes.remove(wake)

        return stop

    def _failed(self, doing: str, exc: sqlite3.Error) -> StoreError | StoreFull:
        """The error to raise for `exc`; a full disk says where and what to do."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and _nearly_full(self.path.parent)):
            return StoreFull(self.path.parent, f"SQLite store {self.path}: {doing}: {exc}")
        return StoreError(f"{doing}: {exc}")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc

    def migrate(self) -> int:
        sqlfiles.migrate(_SqliteMigrations(self), sqlfiles.migrations("fleetforge.adapters.stores.sqlite"))
        return self.schema_version()

    def schema_version(self) -> int:
        try:
            row = self._conn().execute(Q["schema_version"]).fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0] or 0)

    def get_run(self, run_id: str) -> RunRow | None:
        found = self._query(Q["select_run"], (run_id,))
        return rows.run_from_row(tuple(found[0])) if found else None

    def list_runs(
        self, *, status: str | None = None, workspace: str | None = None, limit: int = 50
    ) -> list[RunRow]:
        return [rows.run_from_row(tuple(r)) for r in self._query(Q["list_runs"], (status, workspace, limit))]

    def find_run_ids(self, prefix: str, limit: int) -> list[str]:
        return [str(r[0]) for r in self._query(Q["find_run_ids"], (prefix, rows.prefix_end(prefix), limit))]

    def get_steps(self, run_id: str) -> list[StepRow]:
        return [rows.step_from_row(r) for r in self._query(Q["select_steps_of_run"], (run_id,))]

    def get_attempts(self, run_id: str) -> list[AttemptRow]:
        return [rows.attempt_from_row(tuple(r)) for r in self._query(Q["select_attempts"], (run_id,))]

    def get_decisions(self, run_id: str) -> list[DecisionRow]:
        return [rows.decision_from_row(tuple(r)) for r in self._query(Q["select_decisions"], (run_id,))]

    def get_origin(self, run_id: str) -> RunOrigin | None:
        found = self._query(Q["select_origin"], (run_id,))
        return RunOrigin(*found[0]) if found else None

    def count_open_runs(self) -> int:
        return int(self._query(Q["count_open_runs"])[0][0])

    def aggregate(self, name: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._query(Q[name])]

    def read_outbox(self, after: OutboxPosition, limit: int) -> list[OutboxRecord]:
        return [
            OutboxRecord((xid, seq), eid, kind, run_id, env, created)
            for xid, seq, eid, kind, run_id, env, created in self._query(Q["read_outbox"], (after[1], limit))
        ]

    def iter_outbox(self, batch: int = 5000) -> Iterator[OutboxRecord]:
        pos: OutboxPosition = (0, 0)
        while chunk := self.read_outbox(pos, batch):
            yield from chunk
            pos = chunk[-1].position

    def get_cursor(self, consumer: str) -> OutboxPosition:
        found = self._query(Q["get_cursor"], (consumer,))
        return (int(found[0][0]), int(found[0][1])) if found else (0, 0)

    def set_cursor(self, consumer: str, position: OutboxPosition) -> None:
        with self.transaction() as tx:
            tx.c.execute(Q["set_cursor"], (consumer, position[0], position[1], self.clock.now_us()))

    def get_reader_state(self, name: str) -> str | None:
        found = self._query(Q["get_reader_state"], (name,))
        return str(found[0][0]) if found else None

    def set_cursor_and_state(self, consumer: str, position: OutboxPosition, state: str) -> None:
        """Move the cursor and replace the reader's checkpoint in one transaction."""
        now = self.clock.now_us()
        with self.transaction() as tx:
            tx.c.execute(Q["set_cursor"], (consumer, position[0], position[1], now))
            tx.c.execute(Q["set_reader_state"], (consumer, state, now))

    def try_lease(self, name: str, holder: str, ttl_ms: int) -> int | None:
        """Take or renew lease `name` for `holder`; its epoch while held, else None."""
        with self.transaction() as tx:
            row = tx.c.execute(Q["try_lease"], (name, holder, self.clock.now_us(), ttl_ms * 1000)).fetchone()
        return None if row is None else int(row[0])

    def release_lease(self, name: str, holder: str) -> None:
        with self.transaction() as tx:
            tx.c.execute(Q["release_lease"], (name, holder))

    def outbox_backlog(self, consumer: str) -> tuple[int, int | None]:
        count, oldest = self._query(Q["outbox_backlog"], (self.get_cursor(consumer)[1],))[0]
        return int(count), oldest

    # -- retention (ports.retention.RetentionStore) --------------------------------------------------

    def list_cursors(self) -> list[ReaderCursor]:
        return [ReaderCursor(name, (int(xid), int(seq)), int(updated))
                for name, xid, seq, updated in self._query(Q["list_cursors"])]

    def forget_cursor(self, name: str) -> bool:
        with self.transaction() as tx:
            return tx.c.execute(Q["forget_cursor"], (name,)).rowcount > 0

    def first_unread(self, after: OutboxPosition) -> int | None:
        found = self._query(Q["first_unread"], (after[1],))
        return int(found[0][0]) if found else None

    def outbox_head(self, after: OutboxPosition, upto: OutboxPosition, limit: int) -> list[tuple[OutboxPosition, int]]:
        return [((int(xid), int(seq)), int(created))
                for xid, seq, created in self._query(Q["outbox_head"], (after[1], upto[1], limit))]

    def delete_outbox(self, positions: Sequence[OutboxPosition]) -> int:
        if not positions:
            return 0
        with self.transaction() as tx:
            return int(tx.c.execute(Q["delete_outbox"], (json.dumps([p[1] for p in positions]),)).rowcount)

    def prunable_runs(self, finished_before_us: int, after: tuple[int, str], limit: int) -> list[tuple[int, str]]:
        found = self._query(Q["prunable_runs"], (finished_before_us, after[0], after[1], limit))
        return [(int(finished), str(rid)) for rid, finished in found]

    def graph_steps(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        if not run_ids:
            return []
        return [(str(r), str(s)) for r, s in self._query(Q["graph_steps"], (json.dumps(list(run_ids)),))]

    def delete_runs(self, run_ids: Sequence[str], budget_prefix: str) -> int:
        if not run_ids:
            return 0
        with self.transaction() as tx:
            ids = [r[0] for r in tx.c.execute(Q["deletable_runs"], (json.dumps(list(run_ids)),)).fetchall()]
            if not ids:
                return 0
            doc = json.dumps(ids)
            for name in ("delete_run_deps", "delete_run_steps", "delete_run_attempts", "delete_run_decisions",
                         "delete_run_keys", "delete_run_origins"):
                tx.c.execute(Q[name], (doc,))
            tx.c.execute(Q["delete_run_budgets"], (budget_prefix, doc))
            return int(tx.c.execute(Q["delete_runs"], (doc,)).rowcount)

    # -- API tokens (ports.tokens.TokenStore) ---------------------------------------------------------

    def insert_token(self, row: TokenRow) -> None:
        with self.transaction() as tx:
            tx.c.execute(Q["insert_token"], token_rows.token_params(row))

    def list_tokens(self) -> list[TokenRow]:
        return [token_rows.token_from_row(tuple(r)) for r in self._query(Q["list_tokens"])]

    def token_by_digest(self, digest: str) -> TokenRow | None:
        found = self._query(Q["token_by_digest"], (digest,))
        return token_rows.token_from_row(tuple(found[0])) if found else None

    def revoke_token(self, token_id: str, now_us: int) -> bool:
        with self.transaction() as tx:
            return tx.c.execute(Q["revoke_token"], (token_id, now_us)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            for conn in self._all.values():
                conn.close()
            self._all.clear()
        self._local = threading.local()


class _SqliteMigrations:
    """The SQLite store as a `sqlfiles.MigrationTarget`: one `BEGIN IMMEDIATE` per migration."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def prepare(self) -> None:
        conn = self.store._conn()
        try:
            conn.execute(Q["migrations_table"])
            if "checksum" not in {r[0] for r in conn.execute(Q["migrations_columns"])}:
                conn.execute(Q["migrations_add_checksum"])
        except sqlite3.Error as exc:
            raise self.store._failed("creating schema_migrations failed", exc) from exc

    def applied(self) -> dict[int, str]:
        return {int(v): str(c) for v, c in self.store._query(Q["migrations_applied"])}

    def record_checksum(self, migration: Migration) -> None:
        with self.store.transaction() as tx:
            tx.c.execute(Q["record_checksum"], (migration.checksum, migration.version))

    def apply(self, migration: Migration, statements: list[str]) -> bool:
        with self.store.transaction() as tx:
            if tx.c.execute(Q["migration_applied"], (migration.version,)).fetchone() is not None:
                return False
            try:
                for statement in statements:
                    tx.c.execute(statement)
            except sqlite3.Error as exc:
                raise self.store._failed(f"migration {migration.label} failed", exc) from exc
            tx.c.execute(Q["record_migration"],
                         (migration.version, migration.name, self.store.clock.now_us(), migration.checksum))
        return True
