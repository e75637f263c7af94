"""PostgreSQL state store (server mode): psycopg 3, a small connection pool, row locks.

Queue scans use `FOR UPDATE SKIP LOCKED`; other locks are taken in key order. The outbox is
read in (transaction id, sequence) order, only up to the oldest transaction still in progress,
so a transaction that commits late is never skipped by a reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar, cast

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from fleetforge.adapters.stores import rows, sqlfiles, token_rows
from fleetforge.adapters.stores.postgres.pool import Pool
from fleetforge.adapters.stores.postgres.wakeup import ReadyListener, channel_for
from fleetforge.adapters.stores.sqlfiles import Migration, load_queries
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError, StoreError, StoreUnavailable
from fleetforge.domain.jsontext import parse
from fleetforge.domain.models import BudgetRow, RunRow, StepRow
from fleetforge.domain.secrets import redact_text
from fleetforge.domain.tokens import TokenRow
from fleetforge.ports.clock import Clock, SystemClock
from fleetforge.ports.retention import ReaderCursor
from fleetforge.ports.store import AttemptRow, Completion, DecisionRow, OutboxPosition, OutboxRecord, RunOrigin

__all__ = ["PostgresStore"]

Q = load_queries("fleetforge.adapters.stores.postgres")

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")


class _Errors:
    """Turns psycopg errors into StoreError / StoreUnavailable without leaking the password."""

    def __init__(self, dsn: str) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise ConfigError(f"invalid PostgreSQL DSN: {_scrub_all(str(exc), dsn)}") from None
        self._secrets = [str(params["password"])] if params.get("password") else []
        shown = {k: v for k, v in params.items() if k in {"host", "port", "dbname", "user"}}
        self.where = make_conninfo("", **shown) or "libpq defaults"

    def scrub(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def raise_(self, exc: psycopg.Error, doing: str) -> NoReturn:
        cls = StoreUnavailable if isinstance(exc, psycopg.OperationalError) else StoreError
        detail = self.scrub(str(exc).strip()) or type(exc).__name__
        raise cls(f"PostgreSQL store ({self.where}): {doing} failed: {detail}") from None


def _scrub_all(text: str, dsn: str) -> str:
    """Hide the whole DSN when it cannot even be parsed (its password cannot be located)."""
    return text.replace(dsn, "<dsn>")


class _PostgresTx:
    """One transaction. Statements whose results nothing reads (inserts, updates, NOTIFY) are not sent at
    once: they go in one pipeline with the next read, or with the COMMIT, so a transaction costs a round
    trip per read plus one (BEGIN travels with the first read)."""

    def __init__(self, conn: Conn, clock: Clock, errors: _Errors, channel: str) -> None:
        self.c = conn
        self.clock = clock
        self._errors = errors
        self._channel = channel
        self._notified = False
        self._pending: list[tuple[str, Any, Any, bool]] = [("transaction", q, None, False) for q in _BEGIN]

    def notify_ready(self) -> None:
        if not self._notified:  # one NOTIFY per transaction (PostgreSQL folds equal ones anyway)
            self._notified = True
            self._defer("notify_ready", Q["notify_ready"], (self._channel,))

    def _defer(self, name: str, query: Any, params: Any, many: bool = False) -> None:
        self._pending.append((name, query, params, many))

    def _send(self, last: Callable[[], T] | None = None, doing: str = "", *, pipeline: bool = False) -> T | None:
        """Send the deferred statements and then `last` (reads) in one pipeline (also with none deferred when
        `pipeline`); `last`'s result."""
        pending, self._pending = self._pending, []
        if not pending and not pipeline:
            return None if last is None else self._run(doing, last)
        names = ", ".join(dict.fromkeys(n for n, *_ in pending if n != "transaction")) or "transaction"
        names = names if pending else doing
        got: list[Any] = []
        try:
            if last is None and len(pending) == 1 and not pending[0][3]:  # one statement: no pipeline to set up
                self.c.execute(pending[0][1], pending[0][2])
                return None
            with self.c.pipeline():
                for _, query, params, many in pending:
                    if many:
                        with self.c.cursor() as cur:
                            cur.executemany(query, params)
                    else:
                        self.c.execute(query, params)
                if last is not None:
                    names += f", {doing}" if pending else ""
                    got.append(last())
        except psycopg.Error as exc:
            self._errors.raise_(exc, names)
        return got[0] if got else None

    def commit(self) -> None:
        """Send what is deferred and COMMIT, in one round trip: the writes as one statement where they can be
        (`_one_statement`), and that statement alone when nothing was read (it is a transaction of its own)."""
        unread = len(self._pending) >= len(_BEGIN) and self._pending[0][0] == "transaction"
        begin, writes = (self._pending[:len(_BEGIN)], self._pending[len(_BEGIN):]) if unread else ([], self._pending)
        one = _one_statement(writes)
        if unread and (not writes or (one is not None and all(w[0] in _INSERTS for w in writes))):
            # nothing was read and only inserts are left (they need no planner setting): no BEGIN, no COMMIT
            self._pending = [one] if one is not None else []
        else:
            self._pending = [*begin, *([one] if one is not None else writes)]
            self._defer("commit", "COMMIT", None)
        self._send()

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        if self._pending:
            return cast(T, self._send(fn, what))
        try:
            return fn()
        except psycopg.Error as exc:
            self._errors.raise_(exc, what)

    def execute(self, doing: str, query: str | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement (several when `params` is None), at once; its rows, if it returns any."""
        self._send()  # a script of several statements cannot travel in a pipeline

        def go() -> list[tuple[Any, ...]]:
            cur = self.c.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

        return self._run(doing, go)

    def _many(self, name: str, params: Sequence[Sequence[Any]]) -> None:
        """Run a named statement once per parameter row (deferred; psycopg pipelines the batch)."""
        if params:
            self._defer(name, Q[name], params, many=True)

    def _rows(self, name: str, params: Sequence[Sequence[Any]], fallback: str) -> None:
        """Write a batch with one statement taking the rows as a JSON array of arrays (see queries.sql);
        rows JSON cannot carry exactly (an integer over 64 bits...) go through `fallback`, per row."""
        if not params:
            return
        try:
            doc = orjson.dumps(params).decode()
        except (TypeError, orjson.JSONEncodeError):
            self._many(fallback, params)
            return
        self._defer(name, Q[name], (doc,))

    def _tuples(self, name: str, params: Any) -> list[tuple[Any, ...]]:
        cur = self._run(name, lambda: self.c.execute(Q[name], params))
        return self._run(name, cur.fetchall)

    def _steps(self, name: str, params: Any) -> list[StepRow]:
        cur = self._run(name, lambda: self.c.cursor(row_factory=dict_row).execute(Q[name], params))
        return [rows.step_from_row(r) for r in self._run(name, cur.fetchall)]

    def insert_run(self, run: RunRow) -> None:
        self._defer("insert_run", Q["insert_run"], rows.run_params(run))

    def claim_idempotency_key(self, key: str, run_id: str, now_us: int) -> str:
        self._defer("claim_idempotency_key", Q["claim_idempotency_key"], (key, run_id, now_us))
        return str(self._tuples("select_idempotency_key", (key,))[0][0])

    def insert_steps(self, steps: Sequence[StepRow], deps: Sequence[tuple[str, str, str]]) -> None:
        self._rows("insert_steps_json", [rows.step_params(s) for s in steps], "insert_step")
        self._many("insert_dep", deps)

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        found = self._tuples("select_runs", (list(dict.fromkeys(run_ids)),)) if run_ids else []
        return {r.id: r for r in map(rows.run_from_row, found)}

    def reread_runs(self, runs: Sequence[RunRow]) -> dict[str, RunRow]:
        given = {r.id: r for r in runs}
        found = self._tuples("select_run_states", (list(given),)) if given else []
        return {rid: rows.run_with_state(given[rid], *state) for rid, *state in found}

    def update_runs(self, runs: Sequence[RunRow]) -> None:
        last = {r.id: r for r in runs}  # of a run given twice, the last one is written
        self._rows("update_runs_json", [rows.run_update_params(r) for _, r in sorted(last.items())],
                   "update_run")

    def get_steps(self, run_id: str) -> list[StepRow]:
        return self._steps("select_steps_of_run", (run_id,))

    def lock_ready_steps(self, now_us: int, limit: int) -> list[StepRow]:
        return self._steps("ready_steps", (now_us, limit))

    def lock_ready(self, now_us: int, limit: int) -> tuple[list[StepRow], dict[str, RunRow]]:
        """One statement: the steps, and each run's columns beside the first of its steps."""
        name = "ready_steps_with_runs"
        cur = self._run(name, lambda: self.c.cursor(row_factory=dict_row).execute(Q[name],
                                                                                    {"now": now_us, "limit": limit}))
        steps: list[StepRow] = []
        runs: dict[str, RunRow] = {}
        for r in self._run(name, cur.fetchall):
            steps.append(rows.step_from_row(r))
            if r["r_id"] is not None:
                runs[r["r_id"]] = rows.run_from_row(tuple(r[c] for c in _RUN_COLUMNS))
        return steps, runs

    def lock_for_claim(self, scopes: Sequence[str], if_limited: Sequence[str],
                       runs: Sequence[RunRow]) -> tuple[dict[str, BudgetRow], dict[str, RunRow]]:
        """Both reads in one pipeline (one round trip, with anything deferred)."""
        given = {r.id: r for r in runs}
        wanted = list(dict.fromkeys(scopes))

        def go() -> tuple[Any, Any]:
            budgets = self._lock_budgets_cursor(wanted, if_limited)
            states = self.c.execute(Q["select_run_states"], (list(given),)) if given else None
            return budgets, states

        got = self._send(go, "lock_for_claim", pipeline=True)
        assert got is not None
        budgets, states = got
        return ({b.scope: b for b in map(rows.budget_from_row, budgets.fetchall() if budgets else [])},
                {rid: rows.run_with_state(given[rid], *st) for rid, *st in (states.fetchall() if states else [])})

    def _lock_budgets_cursor(self, wanted: list[str], if_limited: Sequence[str]) -> Any:
        """Send the lock of the budget rows `wanted` (only those of `if_limited` scopes when given)."""
        if wanted and if_limited:
            return self.c.execute(Q["lock_budgets_if_limited"], {"scopes": wanted, "if_limited": list(if_limited)})
        return self.c.execute(Q["lock_budgets"], (wanted,)) if wanted else None

    def lock_steps(self, keys: Sequence[tuple[str, str]]) -> list[StepRow]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        found = {(s.run_id, s.step_id): s for s in self._steps(
            "lock_steps", {"run_ids": [k[0] for k in wanted], "step_ids": [k[1] for k in wanted]})}
        return [found[k] for k in wanted if k in found]

    def lock_expired_leases(self, now_us: int, limit: int) -> list[StepRow]:
        return self._steps("expired_leases", (now_us, limit))

    def lock_expired_approvals(self, now_us: int, limit: int) -> list[StepRow]:
        return self._steps("expired_approvals", (now_us, limit))

    def lock_open_steps(self, run_ids: Sequence[str]) -> list[StepRow]:
        return self._steps("open_steps_of_runs", (list(dict.fromkeys(run_ids)),)) if run_ids else []

    def lock_for_completion(self, run_ids: Sequence[str], runs: Sequence[RunRow], scopes: Sequence[str],
                            if_limited: Sequence[str], steps_of: Sequence[str] = ()) -> Completion:
        """The reads in one pipeline (one round trip, with BEGIN and anything deferred)."""
        given = {r.id: r for r in runs}
        wanted = list(dict.fromkeys(scopes))

        def go() -> tuple[Any, Any, Any, dict[str, Any], Any]:
            steps = self.c.cursor(row_factory=dict_row).execute(Q["open_steps_of_runs"],
                                                                 (list(dict.fromkeys(run_ids)),))
            states = self.c.execute(Q["select_run_states"], (list(given),)) if given else None
            budgets = self._lock_budgets_cursor(wanted, if_limited)
            every = {rid: self.c.cursor(row_factory=dict_row).execute(Q["select_steps_of_run"], (rid,))
                     for rid in dict.fromkeys(steps_of)}
            deps = self.c.execute(Q["select_deps_of_runs"], (list(every),)) if every else None
            return steps, states, budgets, every, deps

        got = self._send(go, "lock_for_completion", pipeline=True)
        assert got is not None
        steps, states, budgets, every, deps = got
        edges: dict[str, list[tuple[str, str]]] = {rid: [] for rid in every}
        for rid, sid, on in deps.fetchall() if deps else []:
            edges[rid].append((sid, on))
        return ([rows.step_from_row(r) for r in steps.fetchall()],
                {rid: rows.run_with_state(given[rid], *st) for rid, *st in (states.fetchall() if states else [])},
                {b.scope: b for b in map(rows.budget_from_row, budgets.fetchall() if budgets else [])},
                {rid: [rows.step_from_row(r) for r in cur.fetchall()] for rid, cur in every.items()}, edges)

    def update_steps(self, steps: Sequence[StepRow]) -> None:
        last = {(s.run_id, s.step_id): s for s in steps}  # of a step given twice, the last one is written
        self._rows("update_steps_json", [rows.step_update_params(s) for _, s in sorted(last.items())],
                   "update_step")

    def release_dependents(self, done: Sequence[tuple[str, str]]) -> list[StepRow]:
        if not done:
            return []
        changed = self._steps(
            "release_dependents", {"run_ids": [k[0] for k in done], "step_ids": [k[1] for k in done]})
        return sorted((s for s in changed if s.deps_remaining == 0), key=lambda s: (s.run_id, s.step_id))

    def lock_budgets(self, scopes: Sequence[str], *, if_limited: Sequence[str] = ()) -> dict[str, BudgetRow]:
        if not scopes:
            return {}
        wanted = list(dict.fromkeys(scopes))
        if if_limited:
            found = self._tuples("lock_budgets_if_limited", {"scopes": wanted, "if_limited": list(if_limited)})
        else:
            found = self._tuples("lock_budgets", (wanted,))
        return {b.scope: b for b in map(rows.budget_from_row, found)}

    def ensure_budgets(self, budgets: Sequence[BudgetRow]) -> None:
        first: dict[str, BudgetRow] = {}
        for b in budgets:
            first.setdefault(b.scope, b)
        self._rows("ensure_budgets_json", [rows.budget_params(b) for _, b in sorted(first.items())],
                   "ensure_budget")

    def upsert_budgets(self, budgets: Sequence[BudgetRow]) -> None:
        last = {b.scope: b for b in budgets}  # of a scope given twice, the last row is written
        self._rows("upsert_budgets_json", [rows.budget_params(b) for _, b in sorted(last.items())],
                   "upsert_budget")

    def insert_attempts(self, attempts: Sequence[AttemptRow]) -> None:
        self._rows("insert_attempts_json", [rows.attempt_params(a) for a in attempts], "insert_attempt")

    def finish_attempts(self, attempts: Sequence[AttemptRow]) -> None:
        last = {(a.run_id, a.step_id, a.attempt): a for a in attempts}
        self._rows("finish_attempts_json", [rows.attempt_finish_params(a) for a in last.values()],
                   "finish_attempt")

    def insert_decisions(self, decisions: Sequence[DecisionRow]) -> None:
        self._many("insert_decision", [rows.decision_params(d) for d in decisions])

    def insert_origin(self, origin: RunOrigin) -> None:
        self._many("insert_origin", [rows.origin_params(origin)])

    def append_events(self, events: Sequence[Envelope]) -> None:
        if not events:
            return
        columns = [self.clock.now_us(), *map(list, zip(*[(e.id, str(e.kind), e.run_id, e.to_json())
                                                          for e in events], strict=True))]
        self._defer("insert_event", Q["insert_events_set"], columns)


_WRITES = {"insert_run": "runs", "update_runs_json": "runs", "insert_steps_json": "steps",
           "update_steps_json": "steps", "ensure_budgets_json": "budgets", "upsert_budgets_json": "budgets",
           "insert_attempts_json": "attempts", "finish_attempts_json": "attempts", "insert_event": "outbox"}
"""Deferred writes `_one_statement` may join, by the table each writes."""
_INSERTS = frozenset({"insert_run", "insert_steps_json", "ensure_budgets_json", "upsert_budgets_json",
                      "insert_attempts_json", "insert_event", "notify_ready"})
"""Of those, the ones that only insert (or, for budgets, insert or update one row found by its key)."""


def _one_statement(writes: list[tuple[str, Any, Any, bool]]) -> tuple[str, Any, Any, bool] | None:
    """The deferred `writes` as one statement (each a data-modifying WITH query, then the NOTIFY, if any, as
    the main query), saving a statement each; None when they are not all joinable or write a table twice (a
    WITH query does not see its siblings' rows: an insert and an update of one row must stay two statements)."""
    if len(writes) == 1 and (writes[0][0] in _WRITES or writes[0][0] == "notify_ready"):
        return writes[0]
    parts: list[str] = []
    params: list[Any] = []
    tables: set[str] = set()
    main, tail = "SELECT 1", ()  # type: tuple[str, Sequence[Any]]
    for name, query, args, many in writes:
        if many or not isinstance(args, (list, tuple)):
            return None
        if name == "notify_ready":
            main, tail = query, args
            continue
        table = _WRITES.get(name)
        if table is None or table in tables:
            return None
        tables.add(table)
        parts.append(f"w{len(parts)} AS (\n{query}\n)")
        params.extend(args)
    if not parts:
        return None
    names = ", ".join(name for name, *_ in writes)
    return names, "WITH " + ",\n".join(parts) + "\n" + main, [*params, *tail], False


_RUN_COLUMNS = tuple(f"r_{c}" for c in ("id", "workspace", "app", "status", "spec", "seed", "slo_tier",
                                          "queue_target_ms", "trace_id", "created_us", "started_us",
                                          "finished_us", "error_kind", "labels", "outputs"))
"""The run columns of `ready_steps_with_runs`, in the order `rows.run_from_row` takes them."""

# Transactions start with the planner told to prefer indexes: scheduler statements look rows up by
# key, and a plan prepared while a table was still small (a sequential scan was cheapest then) would
# otherwise keep scanning it whole as it grows, until autovacuum analyzes it. Sent with the first read.
_BEGIN = ("BEGIN", "SET LOCAL enable_seqscan = off")


def _rollback(conn: Conn) -> None:
    """End the open transaction (psycopg then forgets its prepared statements, as on any ROLLBACK)."""
    if conn.closed or conn.broken or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()  # the pool drops it


class PostgresStore:
    """The store in database `dsn`, tables in `schema` (created by `migrate` when missing)."""

    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        clock: Clock | None = None,
        schema: str = "public",
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if pool_size < 1:
            raise ConfigError(f"pool_size: got {pool_size}, expected an integer >= 1")
        if not schema:
            raise ConfigError("schema: got an empty name, expected a PostgreSQL schema name")
        self.schema = schema
        self.clock = clock or SystemClock()
        self._errors = _Errors(dsn)
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._pool = Pool(self._new_connection, pool_size, timeout_s=max(30.0, 3 * connect_timeout_s))
        self._channel = channel_for(schema)
        self._listener = ReadyListener(self._new_connection, self._channel)

    @property
    def database(self) -> str:
        """The DSN (for components that keep their own tables beside the runs, such as graph checkpoints)."""
        return self._dsn

    def _new_connection(self) -> Conn:
        extra: dict[str, Any] = {}
        given = conninfo_to_dict(self._dsn)
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(1, round(self._connect_timeout_s))
        if "application_name" not in given:
            extra["application_name"] = "fleetforge"
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, **extra)
        except psycopg.Error as exc:
            self._errors.raise_(exc, "connect")
        set_json_loads(parse, conn)  # jsonb columns read as `json.loads` would, faster
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        except psycopg.Error as exc:
            conn.close()
            self._errors.raise_(exc, "set search_path")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTx]:
        with self._pool.connection() as conn:
            tx = _PostgresTx(conn, self.clock, self._errors, self._channel)
            try:
                yield tx
            except BaseException:
                _rollback(conn)
                raise
            try:
                tx.commit()  # as psycopg's transaction(): on a transaction in error, a ROLLBACK
            except StoreError:
                _rollback(conn)
                raise

    def _query(self, name: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            try:
                return conn.execute(Q[name], params).fetchall()
            except psycopg.Error as exc:
                self._errors.raise_(exc, name)

    def _step_query(self, name: str, params: Any) -> list[StepRow]:
        with self._pool.connection() as conn:
            try:
                with conn.cursor(row_factory=dict_row) as cur:
                    found = cur.execute(Q[name], params).fetchall()
            except psycopg.Error as exc:
                self._errors.raise_(exc, name)
        return [rows.step_from_row(r) for r in found]

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction under an advisory lock."""
        sqlfiles.migrate(_PostgresMigrations(self), sqlfiles.migrations("fleetforge.adapters.stores.postgres"))
        return self.schema_version()

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            try:
                found = conn.execute(Q["schema_version"]).fetchone()
            except pg_errors.UndefinedTable:
                return 0
            except psycopg.Error as exc:
                self._errors.raise_(exc, "schema_version")
        return int(found[0]) if found else 0

    def drop_schema(self) -> None:
        """Drop the store's schema and everything in it (for tests; refuses `public`)."""
        if self.schema == "public":
            raise ConfigError("drop_schema: refusing to drop schema 'public'")
        with self.transaction() as tx:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            tx.execute("drop schema", drop)

    def get_run(self, run_id: str) -> RunRow | None:
        found = self._query("select_run", (run_id,))
        return rows.run_from_row(found[0]) if found else None

    def list_runs(
        self, *, status: str | None = None, workspace: str | None = None, limit: int = 50
    ) -> list[RunRow]:
        found = self._query("list_runs", {"status": status, "workspace": workspace, "limit": limit})
        return [rows.run_from_row(r) for r in found]

    def find_run_ids(self, prefix: str, limit: int) -> list[str]:
        found = self._query("find_run_ids", {"lo": prefix, "hi": rows.prefix_end(prefix), "limit": limit})
        return [str(r[0]) for r in found]

    def get_steps(self, run_id: str) -> list[StepRow]:
        return self._step_query("select_steps_of_run", (run_id,))

    def get_attempts(self, run_id: str) -> list[AttemptRow]:
        return [rows.attempt_from_row(r) for r in self._query("select_attempts", (run_id,))]

    def get_decisions(self, run_id: str) -> list[DecisionRow]:
        return [rows.decision_from_row(r) for r in self._query("select_decisions", (run_id,))]

    def get_origin(self, run_id: str) -> RunOrigin | None:
        found = self._query("select_origin", (run_id,))
        return RunOrigin(*found[0]) if found else None

    def count_open_runs(self) -> int:
        return int(self._query("count_open_runs")[0][0])

    def aggregate(self, name: str) -> list[tuple[Any, ...]]:
        return self._query(name)

    def read_outbox(self, after: OutboxPosition, limit: int) -> list[OutboxRecord]:
        found = self._query("read_outbox", {"xid": after[0], "seq": after[1], "limit": limit})
        return [
            OutboxRecord((int(xid), int(seq)), eid, kind, run_id, env, created)
            for xid, seq, eid, kind, run_id, env, created in found
        ]

    def iter_outbox(self, batch: int = 5000) -> Iterator[OutboxRecord]:
        pos: OutboxPosition = (0, 0)
        while chunk := self.read_outbox(pos, batch):
            yield from chunk
            pos = chunk[-1].position

    def get_cursor(self, consumer: str) -> OutboxPosition:
        found = self._query("get_cursor", (consumer,))
        return (int(found[0][0]), int(found[0][1])) if found else (0, 0)

    def set_cursor(self, consumer: str, position: OutboxPosition) -> None:
        self._query_none("set_cursor", (consumer, position[0], position[1], self.clock.now_us()))

    def get_reader_state(self, name: str) -> str | None:
        found = self._query("get_reader_state", (name,))
        return str(found[0][0]) if found else None

    def set_cursor_and_state(self, consumer: str, position: OutboxPosition, state: str) -> None:
        """Move the cursor and replace the reader's checkpoint in one transaction."""
        now = self.clock.now_us()
        with self.transaction() as tx:
            tx.execute("set_cursor", Q["set_cursor"], (consumer, position[0], position[1], now))
            tx.execute("set_reader_state", Q["set_reader_state"], (consumer, state, now))

    def _query_none(self, name: str, params: Any) -> None:
        with self._pool.connection() as conn:
            try:
                conn.execute(Q[name], params)
            except psycopg.Error as exc:
                self._errors.raise_(exc, name)

    def try_lease(self, name: str, holder: str, ttl_ms: int) -> int | None:
        """Take or renew lease `name` for `holder`; its epoch while held, else None."""
        found = self._query("try_lease", {"name": name, "holder": holder, "ttl_us": ttl_ms * 1000})
        return int(found[0][0]) if found else None

    def release_lease(self, name: str, holder: str) -> None:
        self._query_none("release_lease", (name, holder))

    def outbox_backlog(self, consumer: str) -> tuple[int, int | None]:
        xid, seq = self.get_cursor(consumer)
        count, oldest = self._query("outbox_backlog", {"xid": xid, "seq": seq})[0]
        return int(count), oldest

    # -- retention (ports.retention.RetentionStore) --------------------------------------------------

    def list_cursors(self) -> list[ReaderCursor]:
        return [ReaderCursor(name, (int(xid), int(seq)), int(updated))
                for name, xid, seq, updated in self._query("list_cursors")]

    def forget_cursor(self, name: str) -> bool:
        with self.transaction() as tx:
            return bool(tx.execute("forget_cursor", Q["forget_cursor"], (name,)))

    def first_unread(self, after: OutboxPosition) -> int | None:
        found = self._query("first_unread", {"xid": after[0], "seq": after[1]})
        return int(found[0][0]) if found else None

    def outbox_head(self, after: OutboxPosition, upto: OutboxPosition, limit: int) -> list[tuple[OutboxPosition, int]]:
        found = self._query("outbox_head", {"after_xid": after[0], "after_seq": after[1], "upto_xid": upto[0],
                                            "upto_seq": upto[1], "limit": limit})
        return [((int(xid), int(seq)), int(created)) for xid, seq, created in found]

    def delete_outbox(self, positions: Sequence[OutboxPosition]) -> int:
        if not positions:
            return 0
        with self._pool.connection() as conn:  # autocommit: one statement, one short transaction
            try:
                return int(conn.execute(Q["delete_outbox"], ([p[1] for p in positions],)).rowcount)
            except psycopg.Error as exc:
                self._errors.raise_(exc, "delete_outbox")

    def prunable_runs(self, finished_before_us: int, after: tuple[int, str], limit: int) -> list[tuple[int, str]]:
        found = self._query("prunable_runs", {"before": finished_before_us, "after_us": after[0],
                                              "after_id": after[1], "limit": limit})
        return [(int(finished), str(rid)) for rid, finished in found]

    def graph_steps(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        if not run_ids:
            return []
        return [(str(r), str(s)) for r, s in self._query("graph_steps", {"ids": list(run_ids)})]

    def delete_runs(self, run_ids: Sequence[str], budget_prefix: str) -> int:
        if not run_ids:
            return 0
        with self.transaction() as tx:
            return len(tx.execute("delete_runs", Q["delete_runs"],
                                  {"ids": list(run_ids), "budget_prefix": budget_prefix}))

    def on_ready(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Wake-ups from every process using this database and schema (LISTEN/NOTIFY, see wakeup.py)."""
        return self._listener.subscribe(wake)

    # -- API tokens (ports.tokens.TokenStore) ---------------------------------------------------------

    def insert_token(self, row: TokenRow) -> None:
        self._query_none("insert_token", token_rows.token_params(row))

    def list_tokens(self) -> list[TokenRow]:
        return [token_rows.token_from_row(r) for r in self._query("list_tokens")]

    def token_by_digest(self, digest: str) -> TokenRow | None:
        found = self._query("token_by_digest", (digest,))
        return token_rows.token_from_row(found[0]) if found else None

    def revoke_token(self, token_id: str, now_us: int) -> bool:
        return bool(self._query("revoke_token", {"id": token_id, "now": now_us}))

    def close(self) -> None:
        self._listener.close()
        self._pool.close()


class _PostgresMigrations:
    """The PostgreSQL store as a `sqlfiles.MigrationTarget`: a transaction per migration, each under
    the schema's advisory lock, so concurrent starts apply every migration once."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def prepare(self) -> None:
        create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.store.schema))
        with self.store.transaction() as tx:
            tx.execute("migrate", Q["migration_lock"], (self.store.schema,))
            tx.execute("create schema", create)
            tx.execute("migrate", Q["migrations_table"])
            tx.execute("migrate", Q["migrations_add_checksum"])

    def applied(self) -> dict[int, str]:
        return {int(v): str(c) for v, c in self.store._query("migrations_applied")}

    def record_checksum(self, migration: Migration) -> None:
        with self.store.transaction() as tx:
            tx.execute("migrate", Q["record_checksum"], (migration.checksum, migration.version))

    def apply(self, migration: Migration, statements: list[str]) -> bool:
        with self.store.transaction() as tx:
            tx.execute("migrate", Q["migration_lock"], (self.store.schema,))
            if tx.execute("migrate", Q["migration_applied"], (migration.version,)):
                return False
            tx.execute(f"migration {migration.label}", migration.sql)  # the whole file: PostgreSQL splits it
            tx.execute("migrate", Q["record_migration"],
                       (migration.version, migration.name, self.store.clock.now_us(), migration.checksum))
        return True
