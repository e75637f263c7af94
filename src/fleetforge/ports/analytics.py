"""The analytics store (chDB embedded or a ClickHouse server) and the event sources of the sink.

Both backends run the same SQL files; writers hand envelopes to `insert_envelopes`, which the
ingestion pipeline of the schema turns into typed raw rows and, through materialized views, the
derived tables. Event sources deliver envelopes at least once; the sink commits a source's
position only after the events are stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fleetforge.domain.errors import FleetForgeError

__all__ = [
    "AnalyticsError",
    "AnalyticsStore",
    "AnalyticsUnavailable",
    "EventSource",
    "SourceEvent",
]


class AnalyticsError(FleetForgeError):
    """A query or insert of the analytics store failed."""


class AnalyticsUnavailable(AnalyticsError):
    """The analytics store cannot be reached (or its data dir is owned by another process)."""


class AnalyticsStore(Protocol):
    """One ClickHouse engine. Parameters bind `{name:Type}` placeholders; values are never spliced."""

    backend: str  # "chdb" | "clickhouse"

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run one statement that returns nothing of interest (DDL, INSERT ... SELECT, ...)."""
        ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query; rows of Python values (int, float, Decimal, str, datetime, ...)."""
        ...

    def text(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None) -> str:
        """Run a query and return its output rendered by ClickHouse in format `fmt`."""
        ...

    def insert_envelopes(self, batch: Sequence[tuple[str, str | bytes]]) -> None:
        """Insert (event_id, envelope JSON) pairs into telemetry.envelopes_in."""
        ...

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` recorded in telemetry.event_ids (stored or rejected before)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One delivered envelope. `ack` is the source's own position (outbox position, Kafka message)."""

    event_id: str
    envelope: str | bytes
    ack: Any = None


class EventSource(Protocol):
    """Delivers envelopes at least once, in order; `commit` acknowledges everything up to the events."""

    name: str

    def poll(self, max_events: int, timeout_s: float) -> list[SourceEvent]:
        """Up to `max_events` events after the last ones polled (waits at most `timeout_s` for some)."""
        ...

    def commit(self, events: Sequence[SourceEvent]) -> None:
        """Acknowledge `events` (the last batch polled) so they are not delivered again."""
        ...

    def close(self) -> None: ...
