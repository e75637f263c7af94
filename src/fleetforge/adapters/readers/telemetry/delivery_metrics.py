"""Delivery metrics of the outbox readers (Kafka forwarder, ClickHouse sink, trace exporters)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from fleetforge.adapters.readers.telemetry.instruments import BUCKETS
from fleetforge.domain.names import Attr, Metric
from fleetforge.ports.store import Store

__all__ = ["DeliveryMetrics"]

_CONSUMER, _ERROR = str(Attr.CONSUMER), str(Attr.ERROR_KIND)


class DeliveryMetrics:
    """Counters and gauges one outbox reader updates as it delivers; `consumer` is its cursor name.

    `fleetforge.outbox.backlog` and `fleetforge.outbox.lag_seconds` report the last backlog each
    consumer recorded; the lag is measured at collection time from the oldest undelivered event, so a
    reader that stopped reporting shows a growing lag.
    """

    def __init__(self, meter: Meter) -> None:
        self._sent = meter.create_counter(str(Metric.DELIVERY_SENT), unit="{event}",
                                          description="Events delivered by an outbox reader")
        self._failed = meter.create_counter(str(Metric.DELIVERY_FAILED), unit="{event}",
                                            description="Events an outbox reader failed to deliver")
        self._retried = meter.create_counter(str(Metric.DELIVERY_RETRIED), unit="{event}",
                                             description="Delivery retries of an outbox reader")
        self._batch = meter.create_histogram(
            str(Metric.DELIVERY_BATCH_SIZE), unit="{event}", description="Events per delivered batch",
            explicit_bucket_boundaries_advisory=list(BUCKETS[Metric.DELIVERY_BATCH_SIZE]))
        self._latency = meter.create_histogram(
            str(Metric.DELIVERY_LATENCY), unit="s", description="Time to publish one batch",
            explicit_bucket_boundaries_advisory=list(BUCKETS[Metric.DELIVERY_LATENCY]))
        self._lock = threading.Lock()
        self._backlog: dict[str, tuple[int, int | None]] = {}
        meter.create_observable_gauge(str(Metric.OUTBOX_BACKLOG), [self._observe_backlog], unit="{event}",
                                      description="Outbox rows after the consumer's cursor")
        meter.create_observable_gauge(str(Metric.OUTBOX_LAG), [self._observe_lag], unit="s",
                                      description="Age of the oldest outbox row not yet delivered")

    def sent(self, consumer: str, count: int = 1) -> None:
        self._sent.add(count, {_CONSUMER: consumer})

    def failed(self, consumer: str, count: int = 1, error_kind: str = "") -> None:
        self._failed.add(count, {_CONSUMER: consumer, _ERROR: error_kind})

    def retried(self, consumer: str, count: int = 1) -> None:
        self._retried.add(count, {_CONSUMER: consumer})

    def batch(self, consumer: str, size: int, publish_seconds: float) -> None:
        """One delivered batch: its size and how long publishing it took."""
        attrs = {_CONSUMER: consumer}
        self._batch.record(size, attrs)
        self._latency.record(publish_seconds, attrs)

    def backlog(self, consumer: str, rows: int, oldest_created_us: int | None) -> None:
        """What `Store.outbox_backlog(consumer)` returned: rows pending and the oldest one's time."""
        with self._lock:
            self._backlog[consumer] = (rows, oldest_created_us)

    def backlog_from(self, store: Store, consumer: str) -> None:
        """Read the consumer's backlog from the store and record it."""
        rows, oldest = store.outbox_backlog(consumer)
        self.backlog(consumer, rows, oldest)

    def _snapshot(self) -> list[tuple[str, int, int | None]]:
        with self._lock:
            return [(c, rows, oldest) for c, (rows, oldest) in self._backlog.items()]

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(rows, {_CONSUMER: c}) for c, rows, _ in self._snapshot()]

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        now_us = time.time_ns() // 1000
        return [Observation(max(0.0, (now_us - oldest) / 1e6) if rows and oldest else 0.0, {_CONSUMER: c})
                for c, rows, oldest in self._snapshot()]
