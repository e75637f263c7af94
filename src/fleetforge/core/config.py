"""Runtime settings the scheduler obeys."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetforge.domain.models import BudgetLimit

__all__ = ["RuntimeConfig"]


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Scheduler knobs. `app_budgets` maps "workspace/app" to its limit."""

    lease_ms: int = 30_000
    claim_batch: int = 64  # steps leased per claim transaction, at most (and at most the free concurrency)
    defer_delay_ms: int = 250
    max_inflight_tokens: int | None = None  # back-pressure cap across the fleet
    max_inflight_cost: float | None = None
    app_budgets: dict[str, BudgetLimit] = field(default_factory=dict)
    max_output_bytes: int = 1_048_576
