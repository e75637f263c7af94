"""The ClickHouse sink as an outbox reader (embedded mode, and `fleetforge sink --source outbox`).

`SinkReader` only handles a batch: it writes the events through the `EnvelopeWriter` (exactly once per event
id). The core `ReaderLoop` gives it the rest: the lease named after the cursor (two sinks on one outbox never
both write; a standby takes over when the holder stops), pages in commit order, the cursor moved only after
the insert, batching by size or time (`batch_size`, `linger_s` = the flush interval) and one backoff while
ClickHouse is unavailable. `OutboxSink` wires the two for the callers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final

from fleetforge.adapters.readers.clickhouse.sink import SinkConfig, SinkStats, record_flush
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.core.readers import ReaderLoop, ReaderOptions, new_holder
from fleetforge.ports.analytics import AnalyticsError, SourceEvent
from fleetforge.ports.readers import DeliveryObserver, ReaderStore
from fleetforge.ports.store import OutboxPosition, OutboxRecord

__all__ = ["DEFAULT_CONSUMER", "OutboxSink", "SinkReader", "reader_options"]

DEFAULT_CONSUMER: Final = "clickhouse-sink"


def reader_options(config: SinkConfig) -> ReaderOptions:
    """The loop options of a sink: batches of up to `batch_size` events, at most one per flush interval."""
    return ReaderOptions(batch_size=config.batch_size, linger_s=config.flush_interval_s,
                         poll_s=config.poll_timeout_s, backoff_initial_s=config.retry_initial_s,
                         backoff_max_s=config.retry_max_s)


class SinkReader:
    """Writes each batch of outbox records into ClickHouse; the loop commits the cursor after it returns."""

    def __init__(self, writer: EnvelopeWriter, consumer: str = DEFAULT_CONSUMER, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_flush: Callable[[list[SourceEvent]], None] | None = None) -> None:
        self.name = consumer
        self.writer = writer
        self.clock = clock
        self.on_flush = on_flush
        self.stats = SinkStats()

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        return cursor

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        """Insert the events not stored yet (raises AnalyticsError: the loop retries the same batch)."""
        events = [SourceEvent(r.event_id, r.envelope, r.position) for r in records]
        self.stats.polled += len(events)
        try:
            result = self.writer.write(events)
        except AnalyticsError as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            raise
        record_flush(self.stats, result, len(events), self.clock())
        if self.on_flush is not None:
            self.on_flush(events)

    def stop(self) -> None:
        return None


class OutboxSink:
    """One sink over one store's outbox on the core reader loop: `run(stop)` or `drain()`."""

    def __init__(self, store: ReaderStore, writer: EnvelopeWriter, config: SinkConfig | None = None, *,
                 consumer: str = DEFAULT_CONSUMER, holder: str | None = None,
                 observer: DeliveryObserver | None = None, lease_ttl_ms: int = 10_000) -> None:
        self.store = store
        self.config = config or SinkConfig()
        self.reader = SinkReader(writer, consumer)
        self.loop = ReaderLoop(store, self.reader, holder=holder or new_holder(),
                               options=replace(reader_options(self.config), lease_ttl_ms=lease_ttl_ms),
                               observer=observer)

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def stats(self) -> SinkStats:
        return self.reader.stats

    def run(self, stop: threading.Event, *, drain_timeout_s: float = 30.0) -> SinkStats:
        """Stream until `stop` is set, then store what is committed so far (for at most `drain_timeout_s`).

        Events not stored by then stay in the outbox for the next holder of the lease.
        """
        self.loop.run(stop)
        give_up, everything = threading.Event(), threading.Event()
        everything.set()
        timer = threading.Timer(drain_timeout_s, give_up.set)
        timer.daemon = True
        timer.start()
        try:
            self.loop.run(give_up, drain=everything)
        finally:
            timer.cancel()
        return self.stats

    def drain(self) -> int:
        """Store every event after the cursor now, page by page; returns events inserted.

        Nothing happens while another process holds the lease; a failed insert raises (cursor unchanged).
        """
        before = self.stats.inserted
        loop = ReaderLoop(self.store, self.reader, holder=self.loop.lease.holder,
                          options=replace(self.loop.options, linger_s=0.0), observer=self.loop.observer)
        try:
            while loop.step():
                pass
        finally:
            loop.lease.release()
        return self.stats.inserted - before
