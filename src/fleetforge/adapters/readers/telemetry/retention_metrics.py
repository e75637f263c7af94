"""Retention metrics: each reader's lag, whether it blocks pruning, and the rows pruned."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from fleetforge.core.retention import RetentionReport
from fleetforge.domain.names import Attr, Metric

__all__ = ["RetentionMetrics"]

_CONSUMER, _TABLE = str(Attr.CONSUMER), str(Attr.TABLE)


class RetentionMetrics:
    """Pass `record` as the observer of a `RetentionService`.

    `fleetforge.retention.reader_lag_seconds` (gauge, per consumer): age of the oldest outbox row the
    reader has not read, as of the last pass. `fleetforge.retention.blocked` (gauge, per consumer): 1
    while that lag is over the lag limit (the reader holds back pruning), else 0.
    `fleetforge.retention.pruned` (counter, per table `outbox` | `runs`): rows and runs deleted.
    """

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._readers: dict[str, tuple[float, bool]] = {}
        self._pruned = meter.create_counter(str(Metric.RETENTION_PRUNED), unit="{row}",
                                            description="Outbox rows and finished runs deleted by retention")
        meter.create_observable_gauge(str(Metric.RETENTION_READER_LAG), [self._observe_lag], unit="s",
                                      description="Age of the oldest outbox row a reader has not read")
        meter.create_observable_gauge(str(Metric.RETENTION_BLOCKED), [self._observe_blocked], unit="1",
                                      description="1 while a reader lags beyond the lag limit and holds back "
                                                  "outbox pruning")

    def record(self, report: RetentionReport) -> None:
        """What one pass saw and did (a pass that did not hold the lease still reports the readers)."""
        if report.outbox_pruned and not report.dry_run:
            self._pruned.add(report.outbox_pruned, {_TABLE: "outbox"})
        if report.runs_pruned and not report.dry_run:
            self._pruned.add(report.runs_pruned, {_TABLE: "runs"})
        if report.readers or report.held_lease:
            with self._lock:
                self._readers = {r.name: (r.lag_s, r.lagging) for r in report.readers}

    def _snapshot(self) -> list[tuple[str, float, bool]]:
        with self._lock:
            return [(name, lag, lagging) for name, (lag, lagging) in self._readers.items()]

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(lag, {_CONSUMER: name}) for name, lag, _ in self._snapshot()]

    def _observe_blocked(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if lagging else 0, {_CONSUMER: name}) for name, _, lagging in self._snapshot()]
