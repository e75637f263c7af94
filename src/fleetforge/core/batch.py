"""What one scheduler transaction holds: the claims and outcomes it handles and the rows and events it
accumulates (`Batch`) before writing them all at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetforge.core import budgets as B
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import TERMINAL_RUN, BudgetRow, RunRow, StepRow, StepSpec, StepStatus
from fleetforge.domain.money import to_micros
from fleetforge.ports.executor import ExecutionResult, StepFailure
from fleetforge.ports.store import AttemptRow, DecisionRow, Tx

__all__ = ["Batch", "Claim", "Outcome", "doomed", "mark_failed", "moves_budgets"]


@dataclass(slots=True)
class Claim:
    """An attempt a worker holds the lease for."""

    run: RunRow
    step: StepRow
    spec: StepSpec
    attempt: int
    inputs: dict[str, Any]
    reservation: B.Reservation
    worker: str
    started_us: int
    invalid: str | None = None  # why the inputs could not be resolved: the attempt fails (validation)


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: a result or a classified failure."""

    claim: Claim
    finished_us: int
    result: ExecutionResult | None = None
    failure: StepFailure | None = None


@dataclass(slots=True)
class Batch:
    """What one transaction accumulates before writing."""

    events: list[Envelope] = field(default_factory=list)
    steps: dict[tuple[str, str], StepRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)
    budgets: dict[str, BudgetRow] = field(default_factory=dict)
    new_attempts: list[AttemptRow] = field(default_factory=list)
    done_attempts: list[AttemptRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    failed_runs: set[str] = field(default_factory=set)
    touched_runs: set[str] = field(default_factory=set)
    compensations: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # gates.on_failed
    wake: bool = False  # steps were queued ready now: wake the workers once this commits
    run_steps: dict[str, list[StepRow]] = field(default_factory=dict)  # every step of some runs, read at its start
    run_deps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # their edges (step id, depends on)
    locked: dict[tuple[str, str], StepRow] = field(default_factory=dict)  # open steps of those runs, locked
    # state of runs and budget rows as read, so that flush writes only the rows that changed
    run_seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    budget_seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def step(self, s: StepRow) -> None:
        self.steps[(s.run_id, s.step_id)] = s

    def add_runs(self, runs: Mapping[str, RunRow]) -> None:
        for r in runs.values():
            self.run_seen.setdefault(r.id, _run_state(r))
        self.runs.update(runs)

    def add_budget(self, row: BudgetRow) -> None:
        self.budget_seen.setdefault(row.scope, _budget_state(row))
        self.budgets[row.scope] = row

    def flush(self, tx: Tx, now: int) -> None:
        if self.wake or any(s.status is StepStatus.QUEUED and s.not_before_us <= now for s in self.steps.values()):
            tx.notify_ready()
        runs = [r for r in self.runs.values() if self.run_seen.get(r.id) != _run_state(r)]
        if runs:
            tx.update_runs(runs)
        if self.steps:
            tx.update_steps(list(self.steps.values()))
        budgets = [r for r in self.budgets.values() if self.budget_seen.get(r.scope) != _budget_state(r)]
        if budgets:
            tx.upsert_budgets(budgets)
        if self.new_attempts:
            tx.insert_attempts(self.new_attempts)
        if self.done_attempts:
            tx.finish_attempts(self.done_attempts)
        if self.decisions:
            tx.insert_decisions(self.decisions)
        if self.events:
            tx.append_events(self.events)


def _run_state(r: RunRow) -> tuple[Any, ...]:
    """The fields `Tx.update_runs` writes."""
    return (r.status, r.started_us, r.finished_us, r.error_kind)


def _budget_state(r: BudgetRow) -> tuple[Any, ...]:
    return (r.tokens_limit, r.cost_limit_micros, r.tokens_reserved, r.tokens_used, r.cost_reserved_micros,
            r.cost_used_micros)


def moves_budgets(o: Outcome) -> bool:
    """Whether settling `o` may change budget rows: it reserved, or reports usage (either one)."""
    usages = [u.usage for u in (o.result, o.failure) if u is not None]
    return bool(o.claim.reservation.tokens or o.claim.reservation.micros
                or any(u.tokens or to_micros(u.cost_usd) for u in usages))


def doomed(run: RunRow, b: Batch) -> bool:
    """The run ended or failed: nothing more of it may start."""
    return run.status in TERMINAL_RUN or run.id in b.failed_runs or run.error_kind != ""



def mark_failed(b: Batch, run: RunRow, error_kind: str) -> None:
    """Fail `run` (first error kind wins) unless it already ended; it is closed at the end of the batch."""
    if run.status not in TERMINAL_RUN and run.id not in b.failed_runs:
        b.failed_runs.add(run.id)
        run.error_kind = run.error_kind or error_kind
    b.touched_runs.add(run.id)
