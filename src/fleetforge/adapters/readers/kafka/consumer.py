"""A reusable consumer of the event topic: `read_committed`, manual commits, `event.id` de-duplication.

Delivery to a consumer is at-least-once: after a crash or a rebalance, events after the last
committed offset are delivered again. `EventConsumer` drops repeats of an `event.id` it has seen
within a bounded in-memory window (defence in depth against producer retries and aborted
transactions a broker failed to filter); durable de-duplication across restarts is the job of
the consumer's own store (the ClickHouse sink, for one, checks ids it already holds).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from fleetforge.adapters.readers.kafka.bus_errors import BusError
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.names import KafkaHeader

__all__ = ["DEFAULT_DEDUP_WINDOW", "ConsumedEvent", "EventConsumer", "consumer_config"]

log = logging.getLogger("fleetforge.kafka.consumer")

DEFAULT_DEDUP_WINDOW: Final = 100_000
_FORCED: Final = {"enable.auto.commit": "false", "enable.auto.offset.store": "false"}
_DEFAULTS: Final = {"isolation.level": "read_committed", "auto.offset.reset": "earliest"}
_LOST_COMMIT: Final = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST, KafkaError._NO_OFFSET,
})


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """One event read from the bus. `envelope` is the envelope JSON exactly as published."""

    event_id: str
    envelope: str
    kind: str
    topic: str
    partition: int
    offset: int


def consumer_config(
    bootstrap_servers: str, group_id: str, client_props: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The librdkafka configuration `EventConsumer` uses: defaults, then `client_props`, then forced keys.

    Raises ConfigError when `client_props` asks for automatic commits, which would commit events
    before they are processed.
    """
    props = {str(k): str(v) for k, v in (client_props or {}).items()}
    for key in _FORCED:
        if key in props and props[key].strip().lower() not in {"false", "0"}:
            raise ConfigError(
                f"consumer client_props {key}: got {props[key]!r}, expected false (or leave it unset); "
                "EventConsumer commits offsets itself after the events are processed"
            )
    conf = {**_DEFAULTS, **props, **_FORCED}
    conf["bootstrap.servers"] = bootstrap_servers
    conf["group.id"] = group_id
    if conf["isolation.level"] != "read_committed":
        log.warning("consumer isolation.level is %s: events of aborted transactions will be delivered "
                    "(de-duplication on event.id still drops their repeats)", conf["isolation.level"])
    return conf


class EventConsumer:
    """Consume envelopes from `topic` as member of `group_id`; commit after processing."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        client_props: dict[str, str] | None = None,
        *,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
    ) -> None:
        if dedup_window < 0:
            raise ConfigError(f"dedup_window: got {dedup_window}, expected a number >= 0")
        self.topic = topic
        self.group_id = group_id
        self._window = dedup_window
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Per partition: highest offset handed to the caller, and the offset after the last repeat dropped.
        self._returned: dict[int, int] = {}
        self._skipped: dict[int, int] = {}
        self.duplicates_dropped = 0
        try:
            self._consumer = Consumer(consumer_config(bootstrap_servers, group_id, client_props))
            self._consumer.subscribe([topic], on_revoke=self._on_revoke, on_lost=self._on_revoke)
        except KafkaException as exc:
            raise BusError(f"cannot create a consumer for topic {topic!r}: {exc.args[0]}") from exc

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._returned.pop(tp.partition, None)
            self._skipped.pop(tp.partition, None)

    def poll_batch(self, max_events: int, timeout_s: float) -> list[ConsumedEvent]:
        """Up to `max_events` new events, waiting at most `timeout_s`; repeats of a seen `event.id` are dropped."""
        try:
            messages = self._consumer.consume(num_messages=max(1, max_events), timeout=max(0.0, timeout_s))
        except KafkaException as exc:
            raise BusError(f"consuming {self.topic!r} failed: {exc.args[0]}") from exc
        events: list[ConsumedEvent] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise BusError(f"consumer of {self.topic!r} failed: {error.str()}")
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer of %s: %s", self.topic, error.str())
                continue
            event = _event(msg)
            if self._remember(event.event_id):
                events.append(event)
                self._returned[event.partition] = max(self._returned.get(event.partition, -1), event.offset)
            else:
                self.duplicates_dropped += 1
                self._skipped[event.partition] = max(self._skipped.get(event.partition, 0), event.offset + 1)
        return events

    def _remember(self, event_id: str) -> bool:
        """True the first time `event_id` is seen within the window."""
        if self._window == 0 or not event_id:
            return True
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return False
        self._seen[event_id] = None
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        return True

    def commit(self, events: Sequence[ConsumedEvent]) -> None:
        """Commit, synchronously, the offset after the last of `events` in each partition.

        Call it after the events are processed. When every event handed out in a partition is
        covered, dropped repeats after them are committed too. An offset lost to a rebalance is
        logged, not raised: the events are delivered again to the partition's new owner.
        """
        next_offsets: dict[int, int] = {}
        for e in events:
            if e.topic == self.topic:
                next_offsets[e.partition] = max(next_offsets.get(e.partition, 0), e.offset + 1)
        for partition, skipped in self._skipped.items():
            covered = next_offsets.get(partition, 0) > self._returned.get(partition, -1)
            if covered and skipped > next_offsets.get(partition, 0):
                next_offsets[partition] = skipped
        if not next_offsets:
            return
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(next_offsets.items())]
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() in _LOST_COMMIT:
                log.warning("offset commit of %s lost to a rebalance (%s); events will be delivered again",
                            self.topic, error.str())
                return
            raise BusError(f"offset commit of {self.topic!r} failed: {error.str()}") from exc
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise BusError(f"offset commit of {self.topic!r} failed for partitions "
                           f"{[tp.partition for tp in failed]}: {failed[0].error}")

    def close(self) -> None:
        """Leave the group; uncommitted events are delivered again to the next member."""
        self._consumer.close()


def _event(msg: Message) -> ConsumedEvent:
    value = msg.value()
    envelope = value.decode("utf-8") if isinstance(value, bytes) else str(value or "")
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = {k: v for k, v in pairs if v is not None}
    event_id = _text(headers.get(KafkaHeader.EVENT_ID))
    kind = _text(headers.get(KafkaHeader.KIND))
    if not event_id or not kind:
        try:
            doc = json.loads(envelope)
            event_id = event_id or str(doc.get("id", ""))
            kind = kind or str(doc.get("kind", ""))
        except (ValueError, AttributeError):
            pass
    return ConsumedEvent(event_id=event_id, envelope=envelope, kind=kind, topic=str(msg.topic()),
                         partition=int(msg.partition() or 0), offset=int(msg.offset() or 0))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
