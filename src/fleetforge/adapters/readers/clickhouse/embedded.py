"""Embedded analytics: chDB at a data dir fed from the outbox, in this process.

    analytics = EmbeddedAnalytics(data_dir / "clickhouse")
    analytics.apply()                # migrations + materialized_views.sql
    analytics.start(store)           # background thread streaming the outbox into chDB
    ...                              # the runtime runs; the sink only lags if chDB is slow
    analytics.stop()                 # drains every committed event, then stops
    analytics.close()

`sink_outbox(store)` drains once, synchronously, for callers without a thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.schema import ApplyReport, apply_schema
from fleetforge.adapters.readers.clickhouse.sink import SinkConfig, SinkStats
from fleetforge.adapters.readers.clickhouse.sink_reader import DEFAULT_CONSUMER, OutboxSink
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.ports.analytics import AnalyticsUnavailable
from fleetforge.ports.store import Store

__all__ = ["EMBEDDED_SINK_CONFIG", "EmbeddedAnalytics"]

log = logging.getLogger("fleetforge.analytics.embedded")

EMBEDDED_SINK_CONFIG = SinkConfig(flush_interval_s=0.5, poll_timeout_s=0.05)


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of `folder`, None when it is gone: a deleted and recreated folder differs."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class EmbeddedAnalytics:
    """Owns the chDB data dir `data_dir` for this process and streams an outbox into it."""

    def __init__(self, data_dir: str | Path, *, consumer: str = DEFAULT_CONSUMER,
                 config: SinkConfig = EMBEDDED_SINK_CONFIG) -> None:
        self.data_dir = Path(data_dir)
        self.consumer = consumer
        self.config = config
        self.analytics = ChdbAnalytics(self.data_dir)
        self._identity = _identity(self.data_dir)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sink: OutboxSink | None = None

    def check_data_dir(self) -> None:
        """Raise `AnalyticsUnavailable` when the data dir was deleted or replaced since it was opened.

        chDB keeps writing to the files it holds open without an error, into space nobody can read back,
        so an owner of a long-running sink checks this now and then.
        """
        if _identity(self.data_dir) != self._identity:
            raise AnalyticsUnavailable(
                f"the chDB data dir {self.data_dir} was deleted or replaced while this process used it: the "
                "analytics written since are lost. Keep the data dir in place while fleetforge runs, and "
                "start again (`fleetforge demo` starts fresh)"
            )

    def apply(self) -> ApplyReport:
        """Create or upgrade the schema and the derived tables (idempotent)."""
        return apply_schema(self.analytics)

    def _new_sink(self, store: Store) -> OutboxSink:
        return OutboxSink(store, EnvelopeWriter(self.analytics), self.config, consumer=self.consumer)

    def sink_outbox(self, store: Store) -> int:
        """Store every outbox event after this consumer's cursor; returns events inserted."""
        return self._new_sink(store).drain()

    def start(self, store: Store) -> None:
        """Stream `store`'s outbox into chDB from a background thread until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("the embedded analytics sink is already running")
        self._stop.clear()
        self._sink = sink = self._new_sink(store)
        self._thread = threading.Thread(target=sink.run, args=(self._stop,), name="clickhouse-sink",
                                        daemon=True)
        self._thread.start()

    @property
    def stats(self) -> SinkStats | None:
        """Counters of the running (or last) sink."""
        return self._sink.stats if self._sink is not None else None

    def stop(self, timeout_s: float = 60.0) -> SinkStats | None:
        """Drain everything committed to the outbox so far, then stop the thread (at most `timeout_s`)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return self.stats
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("the analytics sink did not stop within %.0fs", timeout_s)
        return self.stats

    def close(self) -> None:
        """Stop the sink (if running) and release the data dir."""
        self.stop()
        self.analytics.close()

    def __enter__(self) -> EmbeddedAnalytics:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
