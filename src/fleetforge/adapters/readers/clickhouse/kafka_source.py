"""The Kafka event source of the sink (distributed mode): a consumer group reading `read_committed`.

Offsets are committed synchronously, and only after the events are stored; after a crash or a
rebalance the events after the last committed offset are delivered again, and the writer's
de-duplication by event id keeps every derived number exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetforge.adapters.readers.kafka.consumer import EventConsumer
from fleetforge.ports.analytics import SourceEvent

__all__ = ["KafkaSource"]


class KafkaSource:
    """Wraps an `EventConsumer` (isolation.level=read_committed, manual commits)."""

    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.name = f"kafka:{consumer.topic}@{consumer.group_id}"

    @classmethod
    def connect(cls, bootstrap_servers: str, topic: str, group_id: str,
                client_props: dict[str, str] | None = None, *, dedup_window: int | None = None) -> KafkaSource:
        if dedup_window is None:
            return cls(EventConsumer(bootstrap_servers, topic, group_id, client_props))
        return cls(EventConsumer(bootstrap_servers, topic, group_id, client_props, dedup_window=dedup_window))

    def poll(self, max_events: int, timeout_s: float) -> list[SourceEvent]:
        return [SourceEvent(e.event_id, e.envelope, e) for e in self.consumer.poll_batch(max_events, timeout_s)]

    def commit(self, events: Sequence[SourceEvent]) -> None:
        self.consumer.commit([e.ack for e in events])

    def close(self) -> None:
        self.consumer.close()
