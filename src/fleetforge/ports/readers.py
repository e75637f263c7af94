"""What an outbox reader needs of the state store, and what it reports while it delivers."""

from __future__ import annotations

from typing import Protocol

from fleetforge.ports.store import OutboxPosition, OutboxRecord

__all__ = ["DeliveryObserver", "LeaseStore", "ReaderStateStore", "ReaderStore"]


class LeaseStore(Protocol):
    """Named leases: one holder per name at a time."""

    def try_lease(self, name: str, holder: str, ttl_ms: int) -> int | None:
        """Take or renew lease `name` for `holder` when free, expired or already held by `holder`.

        Returns the lease epoch (it grows at each change of holder) while held, None otherwise.
        """
        ...
    def release_lease(self, name: str, holder: str) -> None: ...


class ReaderStore(LeaseStore, Protocol):
    """The outbox in commit order, the readers' cursors, and leases."""

    backend: str

    def read_outbox(self, after: OutboxPosition, limit: int) -> list[OutboxRecord]: ...
    def get_cursor(self, consumer: str) -> OutboxPosition: ...
    def set_cursor(self, consumer: str, position: OutboxPosition) -> None: ...
    def outbox_backlog(self, consumer: str) -> tuple[int, int | None]:
        """(rows after the consumer's cursor, created_us of the oldest of them or None)."""
        ...


class ReaderStateStore(ReaderStore, Protocol):
    """A reader's own checkpoint (opaque text, e.g. JSON) kept beside its cursor."""

    def get_reader_state(self, name: str) -> str | None: ...
    def set_cursor_and_state(self, consumer: str, position: OutboxPosition, state: str) -> None:
        """Move the cursor and replace the checkpoint in one transaction."""
        ...


class DeliveryObserver(Protocol):
    """Delivery counters and backlog gauges per reader (`consumer` is the reader's cursor name)."""

    def sent(self, consumer: str, count: int = 1) -> None: ...
    def failed(self, consumer: str, count: int = 1, error_kind: str = "") -> None: ...
    def retried(self, consumer: str, count: int = 1) -> None: ...
    def batch(self, consumer: str, size: int, publish_seconds: float) -> None: ...
    def backlog(self, consumer: str, rows: int, oldest_created_us: int | None) -> None: ...
