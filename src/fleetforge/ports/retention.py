"""What retention needs from a store: readers' cursors, the head of the outbox, finished runs.

Every method is one short statement or transaction, so pruning in small batches never holds
locks the scheduler waits for. Implemented by both stores (see their queries.sql).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetforge.ports.store import OutboxPosition

__all__ = ["ReaderCursor", "RetentionStore", "RunCheckpoints"]


@dataclass(frozen=True, slots=True)
class ReaderCursor:
    """One row of `outbox_cursors`: a registered reader and the last position it handled."""

    name: str
    position: OutboxPosition
    updated_us: int


class RetentionStore(Protocol):
    """The store methods retention uses (both stores implement them beside `Store`)."""

    backend: str

    def list_cursors(self) -> list[ReaderCursor]:
        """Every registered reader (a row of outbox_cursors), by name."""
        ...
    def forget_cursor(self, name: str) -> bool:
        """Remove reader `name`'s cursor; True when it existed. If it reads again it starts over."""
        ...
    def first_unread(self, after: OutboxPosition) -> int | None:
        """created_us of the first outbox row after `after`, None when there is none."""
        ...
    def outbox_head(self, after: OutboxPosition, upto: OutboxPosition, limit: int) -> list[tuple[OutboxPosition, int]]:
        """(position, created_us) of the first `limit` rows after `after` and at or before `upto`, in
        delivery order. On PostgreSQL, never past a transaction still in progress (gap-safe)."""
        ...
    def delete_outbox(self, positions: Sequence[OutboxPosition]) -> int:
        """Delete these outbox rows (one short transaction); how many were deleted."""
        ...
    def prunable_runs(self, finished_before_us: int, after: tuple[int, str], limit: int) -> list[tuple[int, str]]:
        """(finished_us, run id) of up to `limit` terminal runs with no open step, finished before
        `finished_before_us`, ordered by (finished_us, id) and strictly after `after` (keyset paging;
        start with (0, ''))."""
        ...
    def graph_steps(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(run id, step id) of the graph steps (agent steps with an entrypoint) of these runs."""
        ...
    def delete_runs(self, run_ids: Sequence[str], budget_prefix: str) -> int:
        """Delete those of `run_ids` that are terminal with no open step, and not locked by another
        transaction, with their steps, step_deps, attempts, policy decisions, idempotency key and budget
        row (`budget_prefix` + id); one short transaction. Returns how many runs were deleted."""
        ...
    def try_lease(self, name: str, holder: str, ttl_ms: int) -> int | None: ...
    def release_lease(self, name: str, holder: str) -> None: ...


class RunCheckpoints(Protocol):
    """State a component keeps for runs in its own tables beside the store's (LangGraph checkpoints):
    retention deletes it just before the runs, so nothing is left without its run."""

    def delete_for_runs(self, run_ids: Sequence[str]) -> int:
        """Delete what is kept for these runs (terminal, with no open step); returns how many threads (one
        per graph step) were deleted."""
        ...
