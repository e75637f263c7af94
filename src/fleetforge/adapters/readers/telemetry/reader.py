"""The telemetry reader: the guide's metrics and the OTel spans, derived from committed outbox events.

It runs on `core.readers.ReaderLoop` under the lease `telemetry`, so exactly one process of a fleet publishes
the fleet's metrics. Its cumulative state (counter totals, histogram buckets, gauges: a `Ledger`) is saved
beside its cursor in the same transaction; the next holder restores it at takeover, so a counter summed
over every scraped target equals the ground truth, never lost or doubled. A process that does not hold the
lease exposes no fleet series.

Fleet series live in their own MeterProvider (one per lease tenure); the per-run budget series in another
one, rebuilt from the ledger when runs leave their retention window, so per-run series are bounded. The SDK
cannot drop an attribute set, hence the rebuild; and each MeterProvider it builds registers an
`os.register_at_fork` hook that is never released (about 0.8 KiB), so the rebuild happens at most once per
`rebuild_every_s` (default a tenth of the retention window): a run's series leave the scrape between
`series_retention_s` and `series_retention_s + rebuild_every_s` after it ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as PromMetric

from fleetforge import __version__
from fleetforge.adapters.readers.telemetry.instruments import METER_NAME
from fleetforge.adapters.readers.telemetry.ledger import Ledger
from fleetforge.adapters.readers.telemetry.metrics import MetricsRecorder
from fleetforge.adapters.readers.telemetry.settings import RunIdMode
from fleetforge.adapters.readers.telemetry.spans import SpanRecorder
from fleetforge.core.readers import ReaderLoop, ReaderOptions
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.readers import DeliveryObserver, ReaderStateStore
from fleetforge.ports.store import OutboxPosition, OutboxRecord

__all__ = ["DEFAULT_SERIES_RETENTION_S", "READER_NAME", "MeterGeneration", "TelemetryReader", "TelemetryService"]

log = logging.getLogger("fleetforge.telemetry")

READER_NAME: Final = "telemetry"
DEFAULT_SERIES_RETENTION_S: Final = 900.0
"""Per-run series stay 15 min after their run ended: longer than the guide's `for: 5m`."""


@dataclass(frozen=True, slots=True)
class MeterGeneration:
    """A MeterProvider and the private registry its PrometheusMetricReader fills (None: no scrape)."""

    provider: MeterProvider
    registry: CollectorRegistry | None

    def shutdown(self) -> None:
        try:
            self.provider.shutdown(5_000)
        except Exception:  # a failed final OTLP export must not stop the reader
            log.exception("telemetry: shutting down a meter provider failed")


class _Exposed:
    """The prometheus_client collector that shows the current generations' series while `visible()`."""

    def __init__(self, sources: Callable[[], list[CollectorRegistry]], visible: Callable[[], bool]) -> None:
        self.sources = sources
        self.visible = visible

    def describe(self) -> list[PromMetric]:
        return []

    def collect(self) -> Iterator[PromMetric]:
        if not self.visible():
            return
        for registry in self.sources():
            yield from registry.collect()


class TelemetryReader:
    """An `OutboxReader` (and `CheckpointingReader`) recording metrics and spans of committed events."""

    def __init__(
        self,
        store: ReaderStateStore,
        generations: Callable[[], MeterGeneration],
        *,
        spans: SpanRecorder | None = None,
        run_id_mode: RunIdMode = RunIdMode.BUDGET,
        series_retention_s: float = DEFAULT_SERIES_RETENTION_S,
        sweep_every_s: float = 15.0,
        rebuild_every_s: float | None = None,
        name: str = READER_NAME,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.store = store
        self.generations = generations
        self.spans = spans
        self.run_id_mode = run_id_mode
        self.series_retention_s = series_retention_s
        self.sweep_every_s = sweep_every_s
        self.rebuild_every_s = max(sweep_every_s, series_retention_s / 10) if rebuild_every_s is None \
            else rebuild_every_s
        self.wall = wall
        self.lease_valid: Callable[[], bool] = lambda: True
        self.recorder: MetricsRecorder | None = None
        self.ledger = Ledger()
        self._fleet: MeterGeneration | None = None
        self._runs: MeterGeneration | None = None
        self._upto: OutboxPosition | None = None
        self._swept_at = 0.0
        self._lock = threading.RLock()

    # -- what the scrape sees -------------------------------------------------------------------------

    def visible(self) -> bool:
        """True while this process holds the lease and has restored the fleet state."""
        return self.recorder is not None and self.lease_valid()

    def registries(self) -> list[CollectorRegistry]:
        with self._lock:
            return [g.registry for g in (self._fleet, self._runs) if g is not None and g.registry is not None]

    def expose_on(self, registry: CollectorRegistry) -> None:
        """Show the fleet series on `registry` (the process's scrape endpoint) while holding the lease."""
        registry.register(_Exposed(self.registries, self.visible))  # type: ignore[arg-type]

    # -- OutboxReader -------------------------------------------------------------------------------

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        """Restore the ledger saved with `cursor` into fresh instruments."""
        with self._lock:
            self._close()
            fleet, runs = self.generations(), self.generations()
            ledger = Ledger()
            recorder = MetricsRecorder(fleet.provider.get_meter(METER_NAME, __version__),
                                       run_id_mode=self.run_id_mode, ledger=ledger, visible=self.visible,
                                       budget_meter=runs.provider.get_meter(METER_NAME, __version__))
            ledger.loads(self.store.get_reader_state(self.name))
            recorder.replay()
            self.ledger, self._fleet, self._runs, self._upto = ledger, fleet, runs, cursor
            self.recorder = recorder
            self._swept_at = self.wall()
        log.info("telemetry: publishing the fleet's metrics from %s (%d retries so far)",
                 cursor, recorder.retries.total())
        return cursor

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        with self._lock:
            recorder = self.recorder
            if recorder is None:
                raise RuntimeError("telemetry reader not started")
            upto = self._upto
            fresh = [r for r in records if upto is None or r.position > upto]  # a retried batch counts once
            if fresh:
                events = [Envelope.from_json(r.envelope) for r in fresh]
                recorder.record(events)
                if self.spans is not None:
                    self.spans.record(events)
                self._upto = fresh[-1].position
            self.sweep()

    def checkpoint(self) -> str:
        with self._lock:
            return self.ledger.dumps()

    def stop(self) -> None:
        """The lease is gone: expose nothing more (the next holder continues from the saved ledger)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        # shut the generations down (a last push over OTLP) while still visible, then stop exposing
        for g in (self._fleet, self._runs):
            if g is not None:
                g.shutdown()
        self.recorder = None
        self._fleet = self._runs = None

    # -- bounded per-run series ---------------------------------------------------------------------

    def sweep(self, force: bool = False) -> int:
        """Forget the series of runs that ended over `series_retention_s` ago; how many runs left. Unless
        `force`, at most once per `rebuild_every_s` (each sweep that forgets builds a MeterProvider)."""
        with self._lock:
            now = self.wall()
            if self.recorder is None or (not force and now - self._swept_at < self.rebuild_every_s):
                return 0
            self._swept_at = now
            expired = self.ledger.expired(now, self.series_retention_s)
            if not expired:
                return 0
            self.ledger.forget(expired)
            fresh, old = self.generations(), self._runs
            self.recorder.rebind_budget(fresh.provider.get_meter(METER_NAME, __version__))
            self._runs = fresh
            if old is not None:
                old.shutdown()
            return len(expired)


READER_OPTIONS = ReaderOptions(batch_size=5000, linger_s=1.0)
"""Telemetry handles (and checkpoints) at most about once a second: metrics are scraped far less often, and
the worker sharing the process and the store pays less for each batch."""


class TelemetryService:
    """A `TelemetryReader` on its `ReaderLoop` in a background thread (also sweeps while idle)."""

    def __init__(self, store: ReaderStateStore, reader: TelemetryReader, *, holder: str,
                 options: ReaderOptions | None = None, observer: DeliveryObserver | None = None) -> None:
        self.reader = reader
        self.store = store
        self.loop = ReaderLoop(store, reader, holder=holder, options=options or READER_OPTIONS,
                               observer=observer)
        reader.lease_valid = self.loop.lease.valid
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> TelemetryService:
        self._threads = [threading.Thread(target=self.loop.run, args=(self._stop,), kwargs={"drain": self._drain},
                                         name="telemetry", daemon=True),
                         threading.Thread(target=self._sweeper, name="telemetry-sweep", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _sweeper(self) -> None:
        while not self._stop.wait(self.reader.sweep_every_s):
            try:
                self.reader.sweep()
            except Exception:
                log.exception("telemetry: sweeping per-run series failed")

    @property
    def holding(self) -> bool:
        return self.loop.holding

    def caught_up(self, timeout_s: float = 30.0) -> bool:
        """Wait until this process holds the lease and has handled every committed event."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.loop.wake.set()
            if self.loop.holding and self.store.outbox_backlog(self.reader.name)[0] == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Read what is committed up to now (while holding the lease, for up to `timeout_s`), then stop."""
        self._drain.set()
        self.loop.wake.set()
        if self._threads:
            self._threads[0].join(timeout_s)
        self._stop.set()
        self.loop.wake.set()
        for t in self._threads:
            t.join(timeout_s)

