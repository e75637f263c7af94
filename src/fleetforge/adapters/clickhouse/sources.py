"""Event sources of the sink: the outbox directly (embedded mode) and Kafka (distributed mode)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from fleetforge.ports.analytics import SourceEvent
from fleetforge.ports.store import OutboxPosition, Store

__all__ = ["DEFAULT_CONSUMER", "OutboxSource"]

DEFAULT_CONSUMER: Final = "clickhouse-sink"


class OutboxSource:
    """Reads the store's outbox in commit order after its own cursor (`consumer`).

    `poll` advances a local position; `commit` moves the durable cursor to the last event given.
    """

    def __init__(self, store: Store, consumer: str = DEFAULT_CONSUMER, *, idle_sleep_s: float = 0.02,
                 owns_store: bool = False) -> None:
        self.store = store
        self.owns_store = owns_store
        self.name = f"outbox:{consumer}"
        self.consumer = consumer
        self.idle_sleep_s = idle_sleep_s
        self._pos: OutboxPosition = store.get_cursor(consumer)

    def poll(self, max_events: int, timeout_s: float) -> list[SourceEvent]:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            records = self.store.read_outbox(self._pos, max_events)
            if records:
                self._pos = records[-1].position
                return [SourceEvent(r.event_id, r.envelope, r.position) for r in records]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            time.sleep(min(self.idle_sleep_s, left))

    def commit(self, events: Sequence[SourceEvent]) -> None:
        if events:
            self.store.set_cursor(self.consumer, events[-1].ack)

    def rewind(self) -> None:
        """Forget what was polled and not committed (poll again from the durable cursor)."""
        self._pos = self.store.get_cursor(self.consumer)

    def backlog(self) -> int:
        """Events after the durable cursor."""
        return self.store.outbox_backlog(self.consumer)[0]

    def close(self) -> None:
        """Close the store when this source opened it (`owns_store`)."""
        if self.owns_store:
            self.store.close()
