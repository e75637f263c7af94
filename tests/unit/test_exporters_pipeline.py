"""The exporter pipeline on a real SQLite outbox: cursors, restarts, parking and bounded memory.

HTTP answers come from httpx's MockTransport here; tests/integration/test_langsmith_langfuse.py drives
the same paths through real loopback servers.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from fleetforge.adapters.readers.traces.discovery import Delivery, ExporterConfig
from fleetforge.adapters.readers.traces.pipeline import Exporter
from fleetforge.adapters.readers.traces.platforms import PhoenixPlatform
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.exporting import TraceAssembler
from fleetforge.domain.envelope import Envelope
from tests.exporters_support import otlp_spans, run_fleet

KEY = "phx-key-secret-4242"


def config(**delivery: object) -> ExporterConfig:
    d = Delivery(**{"batch_size": 40, "flush_interval_ms": 50, "poll_interval_ms": 20, "timeout_s": 1.0,
                    "max_backoff_s": 0.05, **delivery})  # type: ignore[arg-type]
    return ExporterConfig("phoenix", Path("phoenix.toml"), "https://phoenix.example", {"project": "p"}, d,
                          {"Authorization": f"Bearer {KEY}", "api_key": KEY}, (KEY,))


class Recorder:
    """A MockTransport handler that records delivered span ids and answers from a script."""

    def __init__(self, fail: int = 0, status: int = 200) -> None:
        self.span_ids: list[str] = []
        self.calls = 0
        self.fail, self.status = fail, status
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.gate.wait()
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail or self.status != 200:
                return httpx.Response(self.status if self.status != 200 else 503)
            self.span_ids += [s.span_id.hex() for _, s in otlp_spans(request.content)]
        return httpx.Response(200)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def exporter(store: SqliteStore, rec: Recorder, **delivery: object) -> Exporter:
    cfg = config(**delivery)
    return Exporter(cfg, PhoenixPlatform(cfg), store, client=rec.client()).start()


def all_span_ids(store: SqliteStore) -> list[str]:
    asm = TraceAssembler()
    return [s.span_id for r in store.iter_outbox() for s in asm.feed(Envelope.from_json(r.envelope), r.position)]


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return run_fleet(tmp_path / "state.db", runs=12, seed=5)


def test_delivers_every_span_once_and_commits_both_cursors(store: SqliteStore) -> None:
    rec = Recorder(fail=2)
    e = exporter(store, rec)
    assert e.wait_idle(20)
    assert e.stop(5)
    expected = all_span_ids(store)
    assert sorted(rec.span_ids) == sorted(expected)
    last = list(store.iter_outbox())[-1].position
    assert store.get_cursor("exporter-phoenix") == last
    assert store.get_cursor("exporter-phoenix.open") == last  # no run is open
    assert e.info.retries == 2 and e.info.spans_delivered == len(expected)


def test_a_restart_sends_only_what_is_new(store: SqliteStore, tmp_path: Path) -> None:
    first = Recorder()
    e = exporter(store, first)
    assert e.wait_idle(20) and e.stop(5)
    store.close()
    store = run_fleet(tmp_path / "state.db", runs=4, seed=9)  # more runs into the same outbox
    second = Recorder()
    e2 = exporter(store, second)
    assert e2.wait_idle(20) and e2.stop(5)
    assert not set(first.span_ids) & set(second.span_ids)
    assert sorted(first.span_ids + second.span_ids) == sorted(all_span_ids(store))


def test_an_interrupted_exporter_resumes_without_loss_or_repeats(store: SqliteStore) -> None:
    rec = Recorder()
    e = exporter(store, rec, batch_size=10, queue_size=2)
    while len(rec.span_ids) < 30:
        threading.Event().wait(0.01)
    rec.status = 503  # the platform goes down mid-stream; the process is then stopped
    e.stop(0.5)
    assert e.info.spans_delivered < len(all_span_ids(store))
    rec.status = 200
    e2 = exporter(store, rec)
    assert e2.wait_idle(20) and e2.stop(5)
    counts = Counter(rec.span_ids)
    assert set(counts) == set(all_span_ids(store)) and max(counts.values()) == 1


def test_refused_credentials_park_the_exporter_and_keep_the_cursor(store: SqliteStore,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(status=401)
    with caplog.at_level(logging.INFO, logger="fleetforge.exporters"):
        e = exporter(store, rec)
        assert not e.wait_idle(5)
        assert e.info.state == "auth_failed"
        calls = rec.calls
        threading.Event().wait(0.3)
        assert rec.calls == calls == 1  # no retry
        assert not e.stop(2)
    assert store.get_cursor("exporter-phoenix") == (0, 0)  # the cursor is "delivered up to here"
    assert store.get_cursor("exporter-phoenix") < list(store.iter_outbox())[-1].position
    assert sum("refused the credentials" in r.getMessage() for r in caplog.records) == 1
    assert KEY not in caplog.text


def test_a_hanging_platform_only_fills_the_bounded_queue(store: SqliteStore) -> None:
    rec = Recorder()
    rec.gate.clear()  # every request hangs until released
    e = exporter(store, rec, batch_size=5, queue_size=3, read_batch=10)
    threading.Event().wait(1.0)
    total = len(list(store.iter_outbox()))
    in_flight = e.info.events_read - (total - store.outbox_backlog("exporter-phoenix")[0])
    assert in_flight <= 3  # read but not delivered: at most the bounded batch (queue_size events)
    assert e.info.events_read < total  # the reader waits instead of buffering everything
    rec.gate.set()
    assert e.wait_idle(20) and e.stop(5)
    assert sorted(rec.span_ids) == sorted(all_span_ids(store))


def test_delivery_metrics_carry_the_consumer(store: SqliteStore) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("fleetforge")
    rec = Recorder(fail=1)
    cfg = config()
    e = Exporter(cfg, PhoenixPlatform(cfg), store, client=rec.client(), meter=meter).start()
    assert e.wait_idle(20) and e.stop(5)
    data = reader.get_metrics_data()
    assert data is not None
    points = {m.name: m.data.data_points[0] for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics}
    assert points["fleetforge.delivery.sent"].value == len(all_span_ids(store))
    assert points["fleetforge.delivery.retried"].value == 1
    assert points["fleetforge.delivery.sent"].attributes == {"consumer": "exporter-phoenix"}
