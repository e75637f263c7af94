"""Two sinks, and two trace exporters, started on one outbox: each batch is delivered once, and when the
holder of the lease stops the other takes over without losing anything (SQLite file and PostgreSQL).

Each side opens its own store connection, as a second process would; the writer and the platform count
every event id and span id they receive.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from fleetforge.adapters.readers.clickhouse.sink import SinkConfig
from fleetforge.adapters.readers.clickhouse.sink_reader import OutboxSink
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter, WriteResult
from fleetforge.adapters.readers.traces.discovery import Delivery, ExporterConfig
from fleetforge.adapters.readers.traces.pipeline import Exporter
from fleetforge.adapters.readers.traces.platforms import PhoenixPlatform
from fleetforge.core.exporting import TraceAssembler
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.analytics import AnalyticsStore, SourceEvent
from fleetforge.ports.store import Store
from tests.exporters_support import otlp_spans
from tests.integration.clickhouse_fleet import run_fleet

LEASE_MS = 600


class CountingWriter(EnvelopeWriter):
    """Counts every event id it is asked to insert (no de-duplication: a double delivery shows)."""

    def __init__(self) -> None:
        super().__init__(cast(AnalyticsStore, None))
        self.counts: Counter[str] = Counter()
        self.by: Counter[str] = Counter()
        self.lock = threading.Lock()

    def write(self, events: Sequence[SourceEvent]) -> WriteResult:
        with self.lock:
            self.counts.update(e.event_id for e in events)
            self.by[threading.current_thread().name] += len(events)
        time.sleep(0.01)  # an insert takes time: the other side has every chance to race
        return WriteResult(len(events), 0)


class Platform:
    """A MockTransport handler recording every span id delivered, from any exporter."""

    def __init__(self) -> None:
        self.span_ids: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.span_ids.update(s.span_id.hex() for _, s in otlp_spans(request.content))
        return httpx.Response(200)


@pytest.fixture
def stores(make_store: Any) -> tuple[Store, Store]:
    first: Store = make_store()
    first.migrate()
    run_fleet(first, runs=12, seed=21)  # type: ignore[arg-type]
    return first, make_store()


def _ids(store: Store) -> list[str]:
    return [r.event_id for r in store.read_outbox((0, 0), 1_000_000)]


def test_two_sinks_on_one_outbox_store_each_event_once_and_take_over(stores: tuple[Store, Store]) -> None:
    writer = CountingWriter()
    config = SinkConfig(batch_size=40, flush_interval_s=0.0, poll_timeout_s=0.01)
    sinks = [OutboxSink(s, writer, config, holder=f"sink-{i}", lease_ttl_ms=LEASE_MS) for i, s in enumerate(stores)]
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=s.loop.run, args=(stop,), name=f"sink-{i}", daemon=True)
               for i, (s, stop) in enumerate(zip(sinks, stops, strict=True))]
    for t in threads:
        t.start()
    total = len(_ids(stores[0]))
    deadline = time.monotonic() + 30
    while sum(writer.counts.values()) < total // 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    holder = 0 if sinks[0].loop.holding else 1
    stops[holder].set()  # the holder stops mid-stream; the standby takes over
    threads[holder].join(10)
    while sum(writer.counts.values()) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    stops[1 - holder].set()
    threads[1 - holder].join(10)
    assert set(writer.counts) == set(_ids(stores[0]))  # nothing lost
    assert max(writer.counts.values()) == 1  # nothing written twice
    assert writer.by[f"sink-{holder}"] > 0 and writer.by[f"sink-{1 - holder}"] > 0  # a takeover happened
    assert stores[0].outbox_backlog("clickhouse-sink")[0] == 0


def _config() -> ExporterConfig:
    d = Delivery(batch_size=20, flush_interval_ms=20, poll_interval_ms=20, timeout_s=1.0, max_backoff_s=0.05,
                 read_batch=20)
    return ExporterConfig("phoenix", Path("phoenix.toml"), "https://phoenix.example", {"project": "p"}, d,
                          {"Authorization": "Bearer k"}, ("k",))


def test_two_exporter_processes_deliver_each_span_once_and_take_over(stores: tuple[Store, Store]) -> None:
    platform = Platform()
    cfg = _config()
    exporters = [Exporter(cfg, PhoenixPlatform(cfg), s, client=httpx.Client(transport=httpx.MockTransport(platform)),
                          holder=f"exporter-{i}", lease_ttl_ms=LEASE_MS).start() for i, s in enumerate(stores)]
    asm = TraceAssembler()
    expected = [sp.span_id for r in stores[0].read_outbox((0, 0), 1_000_000)
                for sp in asm.feed(Envelope.from_json(r.envelope), r.position)]
    deadline = time.monotonic() + 30
    while sum(platform.span_ids.values()) < len(expected) // 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    holder = 0 if exporters[0].loop.holding else 1
    assert exporters[holder].stop(0.0) is not None  # stops mid-stream, handing the lease back
    assert exporters[1 - holder].wait_idle(30)
    assert exporters[1 - holder].stop(5)
    assert set(platform.span_ids) == set(expected)  # nothing lost
    assert max(platform.span_ids.values()) == 1  # each span delivered once across both
    assert exporters[holder].info.spans_delivered > 0 and exporters[1 - holder].info.spans_delivered > 0
