"""Budget arithmetic: reservations, limit checks and the remaining headroom (cost in micro-USD)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetforge.domain.models import BudgetLimit, BudgetRow, RunRow, StepSpec, StepType
from fleetforge.domain.money import to_micros

__all__ = [
    "FLEET",
    "Headroom",
    "Reservation",
    "app_scope",
    "exceeded",
    "headroom",
    "reservation_for",
    "row_for_limit",
    "run_scope",
    "scopes_of",
    "settle",
]

FLEET = "fleet"  # tracks what is in flight across the whole fleet (back-pressure caps)


def run_scope(run_id: str) -> str:
    return f"run:{run_id}"


def app_scope(workspace: str, app: str) -> str:
    return f"app:{workspace}/{app}"


def scopes_of(run: RunRow) -> list[str]:
    return [run_scope(run.id), app_scope(run.workspace, run.app), FLEET]


def row_for_limit(scope: str, limit: BudgetLimit) -> BudgetRow:
    return BudgetRow(
        scope=scope,
        tokens_limit=limit.tokens,
        cost_limit_micros=None if limit.cost is None else to_micros(limit.cost),
    )


@dataclass(frozen=True, slots=True)
class Reservation:
    tokens: int
    micros: int
    source: str  # policy | cost_hint | estimate


def reservation_for(step: StepSpec, estimate: tuple[int, float]) -> Reservation:
    """From `policy.budget`, else `execution.cost_hint`, else the executor's estimate. An agent step
    reserves nothing itself: its units (which take its policy) reserve, each for itself."""
    if step.type == StepType.AGENT:
        return Reservation(0, 0, "estimate")
    b = step.policy.budget
    if b is not None and not b.empty:
        return Reservation(b.tokens or 0, to_micros(b.cost or 0.0), "policy")
    hint = step.execution.cost_hint
    if hint is not None:
        return Reservation(hint.tokens, to_micros(hint.usd), "cost_hint")
    return Reservation(estimate[0], to_micros(estimate[1]), "estimate")


def exceeded(row: BudgetRow, tokens: int, micros: int) -> str | None:
    """Why committing `tokens`/`micros` more would break the row's limits, or None."""
    if row.tokens_limit is not None and row.tokens_used + row.tokens_reserved + tokens > row.tokens_limit:
        return (f"{row.scope}: {tokens} more tokens would exceed the limit {row.tokens_limit} "
                f"(used {row.tokens_used}, reserved {row.tokens_reserved})")
    if (row.cost_limit_micros is not None
            and row.cost_used_micros + row.cost_reserved_micros + micros > row.cost_limit_micros):
        return (f"{row.scope}: ${micros / 1e6:.6f} more would exceed the limit "
                f"${row.cost_limit_micros / 1e6:.6f} (used ${row.cost_used_micros / 1e6:.6f}, "
                f"reserved ${row.cost_reserved_micros / 1e6:.6f})")
    return None


@dataclass(frozen=True, slots=True)
class Headroom:
    """The tightest limit among a run's scopes and what is left of it (0 limit = none)."""

    tokens_limit: int
    tokens_remaining: int
    cost_limit_micros: int
    cost_remaining_micros: int
    tokens_committed: int  # used + reserved in the scope holding the tightest token limit
    cost_committed_micros: int
    active: bool  # some limit applies


def headroom(rows: list[BudgetRow]) -> Headroom:
    tok = [(r.tokens_limit - r.tokens_used - r.tokens_reserved, r) for r in rows if r.tokens_limit is not None]
    cost = [(r.cost_limit_micros - r.cost_used_micros - r.cost_reserved_micros, r)
            for r in rows if r.cost_limit_micros is not None]
    t_rem, t_row = min(tok, key=lambda x: x[0]) if tok else (0, None)
    c_rem, c_row = min(cost, key=lambda x: x[0]) if cost else (0, None)
    return Headroom(
        tokens_limit=t_row.tokens_limit or 0 if t_row else 0,
        tokens_remaining=t_rem,
        cost_limit_micros=c_row.cost_limit_micros or 0 if c_row else 0,
        cost_remaining_micros=c_rem,
        tokens_committed=t_row.tokens_used + t_row.tokens_reserved if t_row else 0,
        cost_committed_micros=c_row.cost_used_micros + c_row.cost_reserved_micros if c_row else 0,
        active=bool(tok or cost),
    )


def settle(rows: list[BudgetRow], *, reserve_tokens: int = 0, reserve_micros: int = 0,
           use_tokens: int = 0, use_micros: int = 0) -> None:
    """Apply deltas to every row: reserved += reserve_*, used += use_*."""
    for r in rows:
        r.tokens_reserved += reserve_tokens
        r.cost_reserved_micros += reserve_micros
        r.tokens_used += use_tokens
        r.cost_used_micros += use_micros
