"""The state store: runs, steps, budgets, the cost ledger, policy decisions and the outbox.

Every method of `Tx` runs inside one database transaction; a state change and the events
describing it are written by the same `Tx` and commit together or not at all. Methods take and
return batches so that a backend can send them in few round trips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import BudgetRow, RunRow, StepRow

__all__ = [
    "AttemptRow",
    "Completion",
    "DecisionRow",
    "OutboxPosition",
    "OutboxRecord",
    "RunOrigin",
    "Store",
    "Tx",
]

OutboxPosition = tuple[int, int]
"""Position in the outbox's delivery order: (transaction id, sequence); (0, seq) on SQLite."""


@dataclass(slots=True)
class AttemptRow:
    """One line of the cost ledger: an attempt's reservation and, once finished, its actuals."""

    run_id: str
    step_id: str
    attempt: int
    status: str  # running | succeeded | failed | denied
    worker: str
    started_us: int
    finished_us: int | None = None
    error_kind: str = ""
    tokens_reserved: int = 0
    tokens_used: int = 0
    cost_reserved_micros: int = 0
    cost_used_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    tool: str = ""
    provider: str = ""
    model: str = ""


@dataclass(slots=True)
class DecisionRow:
    """One guardrail evaluation."""

    id: str
    run_id: str
    step_id: str
    attempt: int
    pack: str
    hook: str
    effect: str
    reason: str
    at_us: int
    wait_us: int = 0  # human_approval: request to answer (or timeout)


@dataclass(frozen=True, slots=True)
class RunOrigin:
    """Where a run made from another one comes from: kind "fork", the source run and step, who asked."""

    run_id: str
    kind: str
    source_run: str
    source_step: str
    actor: str
    created_us: int


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outbox row as readers see it."""

    position: OutboxPosition
    event_id: str
    kind: str
    run_id: str
    envelope: str  # the envelope JSON, delivered unchanged
    created_us: int


Completion = tuple[list[StepRow], dict[str, RunRow], dict[str, BudgetRow], dict[str, list[StepRow]],
                   dict[str, list[tuple[str, str]]]]
"""What `Tx.lock_for_completion` returns: open steps, runs, budget rows, every step of some runs and
their dependency edges (step id, depends on)."""


class Tx(Protocol):
    """Operations inside one transaction. Rows returned by `lock_*` stay locked until commit."""

    def insert_run(self, run: RunRow) -> None: ...
    def claim_idempotency_key(self, key: str, run_id: str, now_us: int) -> str:
        """Bind `key` to `run_id` unless a run already holds it; the id of the run holding `key`.

        Keys are unique: of concurrent transactions claiming one key, one binds it and the others
        (waiting for it to commit) get its run id. Retention deletes a run's key with the run.
        """
        ...
    def insert_steps(self, steps: Sequence[StepRow], deps: Sequence[tuple[str, str, str]]) -> None:
        """Insert steps and their edges as (run_id, step_id, depends_on)."""
        ...
    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]: ...
    def reread_runs(self, runs: Sequence[RunRow]) -> dict[str, RunRow]:
        """The given runs as stored now, by id, as `get_runs` would return them: new rows with the fields
        `update_runs` writes read again, the others (which never change) copied from the given rows.
        Runs not stored are left out."""
        ...
    def update_runs(self, runs: Sequence[RunRow]) -> None:
        """Write status, started_us, finished_us and error_kind."""
        ...
    def get_steps(self, run_id: str) -> list[StepRow]: ...
    def lock_ready_steps(self, now_us: int, limit: int) -> list[StepRow]:
        """Lock up to `limit` queued steps due by `now_us`, least slack first, skipping locked rows."""
        ...
    def lock_ready(self, now_us: int, limit: int) -> tuple[list[StepRow], dict[str, RunRow]]:
        """`lock_ready_steps(now_us, limit)` and `get_runs` of their runs (a backend may read both at once)."""
        ...
    def lock_for_claim(self, scopes: Sequence[str], if_limited: Sequence[str],
                       runs: Sequence[RunRow]) -> tuple[dict[str, BudgetRow], dict[str, RunRow]]:
        """`lock_budgets(scopes, if_limited=...)` then `reread_runs(runs)`, in this order, as if called one
        after the other (a backend may send them in one round trip)."""
        ...
    def lock_steps(self, keys: Sequence[tuple[str, str]]) -> list[StepRow]:
        """Lock the given (run_id, step_id) steps."""
        ...
    def lock_expired_leases(self, now_us: int, limit: int) -> list[StepRow]:
        """Lock running steps whose lease expired before `now_us`."""
        ...
    def lock_expired_approvals(self, now_us: int, limit: int) -> list[StepRow]:
        """Lock steps waiting for approval whose deadline (`not_before_us`, 0 for none) is at or before `now_us`,
        skipping locked rows."""
        ...
    def lock_open_steps(self, run_ids: Sequence[str]) -> list[StepRow]:
        """Lock every non-terminal step of the given runs."""
        ...
    def lock_for_completion(self, run_ids: Sequence[str], runs: Sequence[RunRow], scopes: Sequence[str],
                            if_limited: Sequence[str], steps_of: Sequence[str] = ()) -> Completion:
        """`lock_open_steps(run_ids)`, `reread_runs(runs)`, `lock_budgets(scopes, if_limited=...)`, then
        `get_steps` of each run in `steps_of` and the dependency edges of those runs (by run id: (step id,
        depends on) pairs), in this order, as if called one after the other (a backend may send them in one
        round trip)."""
        ...
    def update_steps(self, steps: Sequence[StepRow]) -> None:
        """Write every mutable field of the given steps."""
        ...
    def release_dependents(self, done: Sequence[tuple[str, str]]) -> list[StepRow]:
        """Decrement deps_remaining of the dependents of the succeeded (run_id, step_id) steps.

        Returns the dependents (locked) whose count reached zero.
        """
        ...
    def lock_budgets(self, scopes: Sequence[str], *, if_limited: Sequence[str] = ()) -> dict[str, BudgetRow]:
        """Lock and return the budget rows that exist among `scopes`.

        A row whose scope is also in `if_limited` is locked and returned only when it carries a limit
        (tokens or cost); otherwise it is neither locked nor returned.
        """
        ...
    def ensure_budgets(self, rows: Sequence[BudgetRow]) -> None:
        """Insert the rows whose scope does not exist yet; existing rows are left untouched."""
        ...
    def upsert_budgets(self, rows: Sequence[BudgetRow]) -> None: ...
    def insert_attempts(self, rows: Sequence[AttemptRow]) -> None: ...
    def finish_attempts(self, rows: Sequence[AttemptRow]) -> None:
        """Write the outcome and actual usage of attempts inserted earlier."""
        ...
    def insert_decisions(self, rows: Sequence[DecisionRow]) -> None: ...
    def insert_origin(self, origin: RunOrigin) -> None:
        """Record where a run made from another one comes from (one row per run)."""
        ...
    def append_events(self, events: Sequence[Envelope]) -> None:
        """Append envelopes to the outbox, in order."""
        ...
    def notify_ready(self) -> None:
        """Steps this transaction queued are ready: once it commits, wake the workers (`Store.on_ready`)."""
        ...


class Store(Protocol):
    """A state store backend (SQLite or PostgreSQL)."""

    backend: str

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version."""
        ...
    def schema_version(self) -> int: ...
    def transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction; commits on normal exit, rolls back on an exception."""
        ...
    def get_run(self, run_id: str) -> RunRow | None: ...
    def list_runs(
        self, *, status: str | None = None, workspace: str | None = None, limit: int = 50
    ) -> list[RunRow]: ...
    def find_run_ids(self, prefix: str, limit: int) -> list[str]:
        """Up to `limit` run ids that start with `prefix` (compared as code points), in id order."""
        ...
    def get_steps(self, run_id: str) -> list[StepRow]: ...
    def get_attempts(self, run_id: str) -> list[AttemptRow]: ...
    def get_decisions(self, run_id: str) -> list[DecisionRow]: ...
    def get_origin(self, run_id: str) -> RunOrigin | None:
        """Where the run comes from, None for a run submitted from a spec."""
        ...
    def count_open_runs(self) -> int:
        """Runs not yet terminal."""
        ...
    def aggregate(self, name: str) -> list[tuple[Any, ...]]:
        """Run a named read-only summary query (see core.summary for the names)."""
        ...
    def read_outbox(self, after: OutboxPosition, limit: int) -> list[OutboxRecord]:
        """Rows after `after` in delivery order. Never returns a row past one that may still commit."""
        ...
    def iter_outbox(self, batch: int = 5000) -> Iterator[OutboxRecord]:
        """Every committed outbox row in delivery order."""
        ...
    def get_cursor(self, consumer: str) -> OutboxPosition: ...
    def set_cursor(self, consumer: str, position: OutboxPosition) -> None: ...
    def get_reader_state(self, name: str) -> str | None:
        """A reader's checkpoint saved by `set_cursor_and_state`, None when it has none."""
        ...
    def set_cursor_and_state(self, consumer: str, position: OutboxPosition, state: str) -> None:
        """Move the cursor and replace the reader's checkpoint in one transaction."""
        ...
    def outbox_backlog(self, consumer: str) -> tuple[int, int | None]:
        """(rows after the consumer's cursor, created_us of the oldest of them or None)."""
        ...
    def try_lease(self, name: str, holder: str, ttl_ms: int) -> int | None:
        """Take or renew lease `name` for `holder` when free, expired or already held by `holder`.

        Returns the lease epoch (it grows at each change of holder) while held, None otherwise.
        One outbox reader at a time holds a reader's lease (e.g. the Kafka forwarder's).
        """
        ...
    def release_lease(self, name: str, holder: str) -> None:
        """Expire lease `name` now if `holder` holds it."""
        ...
    def on_ready(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` (from any thread) after each commit of a transaction that called `Tx.notify_ready`: in
        this process, and on PostgreSQL in any process (LISTEN/NOTIFY). Returns the function that stops it."""
        ...
    def close(self) -> None: ...
