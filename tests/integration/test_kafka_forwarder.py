"""The outbox forwarder against a real Kafka-protocol broker (Tansu), on SQLite and PostgreSQL outboxes."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.consumer import ConsumedEvent, EventConsumer
from fleetforge.adapters.readers.kafka.forwarder import Forwarder
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.names import KafkaHeader, Metric
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.store import OutboxPosition, Store
from tests.conftest import MakeStore
from tests.fixtures import kafka as kafka_fixtures
from tests.fixtures.kafka import (
    TANSU_GROUP_PROPS,
    RawMessage,
    create_topic,
    envelopes,
    read_topic,
    unique_name,
)

tansu_broker = kafka_fixtures.tansu_broker
pytestmark = pytest.mark.timeout(180)

SPEC = {"workspace": "acme", "app": "fwd", "steps": [
    {"id": "a", "type": "llm", "inputs": {"model": "sim-small", "prompt": "hi"}},
    {"id": "b", "type": "tool", "depends_on": ["a"], "inputs": {"tool": "calculator", "args": {"expression": "1+2"}}},
]}


class Crash(BaseException):
    """Stands for the process dying at a chosen point."""


def append(store: Store, events: list[Envelope], per_tx: int = 400) -> None:
    for i in range(0, len(events), per_tx):
        with store.transaction() as tx:
            tx.append_events(events[i:i + per_tx])


def bus(bootstrap: str, **overrides: Any) -> BusConfig:
    settings: dict[str, Any] = {"bootstrap_servers": bootstrap, "topic": unique_name("events"),
                                "topic_partitions": 3, "batch_size": 200, "poll_interval_ms": 20,
                                "lease_ttl_ms": 3_000, "instance_id": unique_name("fwd")}
    settings.update(overrides)
    return BusConfig(**settings)


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found.setdefault(m.name, []).extend(m.data.data_points)
    return found


def ids(messages: list[RawMessage]) -> list[str]:
    return [m.headers[KafkaHeader.EVENT_ID] for m in messages]


@pytest.mark.parametrize("transactional", [False, True], ids=["at-least-once", "transactional"])
def test_every_event_reaches_the_topic_once_with_key_headers_and_value(
    store: Store, tansu_broker: str, transactional: bool
) -> None:
    events = envelopes(1_000, runs=7)
    append(store, events)
    outbox = list(store.iter_outbox())
    cfg = bus(tansu_broker, transactional_id=unique_name("tx") if transactional else None)
    reader = InMemoryMetricReader()
    stats = Forwarder(store, cfg, meter_provider=MeterProvider(metric_readers=[reader])).run(until_idle=True)

    messages = read_topic(tansu_broker, cfg.topic)
    assert sorted(ids(messages)) == sorted(e.id for e in events)
    by_id = {r.event_id: r for r in outbox}
    for m in messages:
        record = by_id[m.headers[KafkaHeader.EVENT_ID]]
        assert m.key == record.run_id
        assert m.value == record.envelope
        assert m.headers[KafkaHeader.KIND] == record.kind
        trace = Envelope.from_json(record.envelope).to_dict()["trace"]
        assert m.headers[KafkaHeader.TRACEPARENT] == trace["traceparent"]
        assert m.headers[KafkaHeader.OUTBOX_POSITION] == f"{record.position[0]}:{record.position[1]}"
    # Per-run order: within a partition, each run's events keep outbox order.
    order = {r.event_id: i for i, r in enumerate(outbox)}
    for run in {m.key for m in messages}:
        seq = [order[m.headers[KafkaHeader.EVENT_ID]] for m in messages if m.key == run]
        assert seq == sorted(seq)
    assert store.get_cursor(cfg.outbox_consumer) == outbox[-1].position
    assert stats.sent == 1_000 and stats.failed == 0

    points = metric_points(reader)
    assert sum(p.value for p in points[Metric.DELIVERY_SENT]) == 1_000
    assert sum(p.count for p in points[Metric.DELIVERY_BATCH_SIZE]) == stats.batches
    assert sum(p.sum for p in points[Metric.DELIVERY_BATCH_SIZE]) == 1_000
    assert sum(p.count for p in points[Metric.DELIVERY_LATENCY]) == stats.batches
    assert [p.value for p in points[Metric.OUTBOX_BACKLOG]] == [0]
    if transactional:
        assert stats.batches == math.ceil(1_000 / cfg.batch_size)
        checkpoint = Consumer({"bootstrap.servers": tansu_broker, "group.id": cfg.checkpoint_group_id})
        committed = checkpoint.committed([TopicPartition(cfg.topic, 0)], timeout=10)[0]
        checkpoint.close()
        assert committed.offset == outbox[-1].position[1]


def test_transactional_restart_after_commit_before_cursor_does_not_republish(
    store: Store, tansu_broker: str
) -> None:
    events = envelopes(1_000)
    append(store, events)
    outbox = list(store.iter_outbox())
    cfg = bus(tansu_broker, transactional_id=unique_name("tx"))
    commits: list[OutboxPosition] = []

    def die_after_second_commit(position: OutboxPosition) -> None:
        commits.append(position)
        if len(commits) == 2:
            raise Crash

    with pytest.raises(Crash):
        Forwarder(store, cfg, after_publish=die_after_second_commit).run(until_idle=True)
    # Kafka holds two committed batches, the cursor only the first.
    assert store.get_cursor(cfg.outbox_consumer) == commits[0] == outbox[199].position
    assert len(read_topic(tansu_broker, cfg.topic)) == 400

    stats = Forwarder(store, cfg).run(until_idle=True)
    assert stats.recovered == 1
    assert stats.sent == 600  # the committed second batch was not sent again
    messages = read_topic(tansu_broker, cfg.topic)
    assert sorted(ids(messages)) == sorted(e.id for e in events)


def test_at_least_once_restart_after_ack_before_cursor_resends_only_that_chunk(
    store: Store, tansu_broker: str
) -> None:
    events = envelopes(1_000)
    append(store, events)
    cfg = bus(tansu_broker, max_in_flight=300)
    acked: list[OutboxPosition] = []

    def die_after_second_chunk(position: OutboxPosition) -> None:
        acked.append(position)
        if len(acked) == 2:
            raise Crash

    with pytest.raises(Crash):
        Forwarder(store, cfg, after_publish=die_after_second_chunk).run(until_idle=True)
    Forwarder(store, cfg).run(until_idle=True)
    got = ids(read_topic(tansu_broker, cfg.topic))
    assert set(got) == {e.id for e in events}
    assert len(got) == 1_000 + 300  # the unrecorded chunk, once more


def test_events_of_the_real_runtime_reach_a_consumer_exactly_once(tansu_broker: str, make_store: MakeStore) -> None:
    store = make_store(clock=SystemClock())
    store.migrate()
    cfg = bus(tansu_broker, transactional_id=unique_name("tx"))
    stop = threading.Event()
    fwd = Forwarder(store, cfg)
    thread = threading.Thread(target=fwd.run, args=(stop,), daemon=True)
    thread.start()

    async def fleet() -> None:
        async with httpx.AsyncClient() as client:
            runtime = build_runtime(store, client, sim_sleep=False)
            for _ in range(60):
                runtime.submit(SPEC)
            await runtime.worker("w1", concurrency=16, poll_interval_s=0.01).run(until_idle=True)

    asyncio.run(fleet())
    outbox = list(store.iter_outbox())
    deadline = time.monotonic() + 60
    while store.get_cursor(cfg.outbox_consumer) != outbox[-1].position:
        assert time.monotonic() < deadline, "the forwarder did not drain the outbox"
        time.sleep(0.05)
    stop.set()
    thread.join(30)

    consumer = EventConsumer(tansu_broker, cfg.topic, unique_name("sink"), TANSU_GROUP_PROPS)
    got: list[ConsumedEvent] = []
    deadline = time.monotonic() + 60
    while len(got) < len(outbox) and time.monotonic() < deadline:
        batch = consumer.poll_batch(500, 0.5)
        got += batch
        consumer.commit(batch)
    consumer.close()
    assert sorted(e.event_id for e in got) == sorted(r.event_id for r in outbox)
    assert {e.kind for e in got} == {r.kind for r in outbox}
    assert all(Envelope.from_json(e.envelope).id == e.event_id for e in got)


def test_two_forwarders_on_one_outbox_never_double_publish(tansu_broker: str, make_store: MakeStore) -> None:
    stores = [make_store(clock=SystemClock()) for _ in range(3)]
    stores[0].migrate()
    topic = unique_name("events")
    forwarders = [Forwarder(s, bus(tansu_broker, topic=topic, instance_id=f"fwd-{i}"))
                  for i, s in enumerate(stores[:2])]
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=f.run, args=(stop,), daemon=True)
               for f, stop in zip(forwarders, stops, strict=True)]
    for t in threads:
        t.start()
    sent: list[Envelope] = []
    for wave in range(5):
        batch = envelopes(300, start=wave * 300)
        append(stores[2], batch, per_tx=50)
        sent += batch
        time.sleep(0.2)
    wait_drained(stores[2], forwarders[0].config.outbox_consumer)
    leader = 0 if forwarders[0].stats.sent else 1
    assert forwarders[1 - leader].stats.sent == 0, "the standby published"
    # The leader stops cleanly (releasing its lease): the standby takes over at once.
    stops[leader].set()
    threads[leader].join(30)
    more = envelopes(300, start=10_000)
    append(stores[2], more)
    sent += more
    wait_drained(stores[2], forwarders[0].config.outbox_consumer)
    stops[1 - leader].set()
    threads[1 - leader].join(30)
    assert forwarders[1 - leader].stats.sent == 300
    got = ids(read_topic(tansu_broker, topic))
    assert sorted(got) == sorted(e.id for e in sent)


def wait_drained(store: Store, consumer: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while store.outbox_backlog(consumer)[0]:
        assert time.monotonic() < deadline, "the outbox was not drained"
        time.sleep(0.05)


def test_store_lease_is_exclusive_and_expires(make_store: MakeStore) -> None:
    store = make_store(clock=SystemClock())
    store.migrate()
    assert store.try_lease("fwd", "a", 800) == 1
    assert store.try_lease("fwd", "b", 800) is None
    assert store.try_lease("fwd", "a", 800) == 1  # renewal keeps the epoch
    time.sleep(1.0)
    assert store.try_lease("fwd", "b", 800) == 2  # expired: taken over, new epoch
    assert store.try_lease("fwd", "a", 800) is None
    store.release_lease("fwd", "b")
    assert store.try_lease("fwd", "a", 800) == 3


# -- the consumer helper ----------------------------------------------------------------------------


def produce_raw(bootstrap: str, topic: str, ids_: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in ids_:
        producer.produce(topic, key="run-1", value=f'{{"id":"{i}","kind":"step_queued"}}',
                         headers=[(KafkaHeader.EVENT_ID, i), (KafkaHeader.KIND, "step_queued")])
    producer.flush(15)


def drain(consumer: EventConsumer, want: int, timeout_s: float = 20) -> list[ConsumedEvent]:
    got: list[ConsumedEvent] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.poll_batch(100, 0.3)
    return got


def test_event_consumer_drops_repeats_and_resumes_after_its_commit(tansu_broker: str) -> None:
    topic, group = unique_name("events"), unique_name("sink")
    create_topic(tansu_broker, topic, partitions=1)
    produce_raw(tansu_broker, topic, ["a", "b", "a", "c", "b"])  # repeats, the last message one of them
    consumer = EventConsumer(tansu_broker, topic, group, TANSU_GROUP_PROPS)
    got = drain(consumer, 3)
    time.sleep(0.5)
    got += consumer.poll_batch(100, 0.5)
    assert [e.event_id for e in got] == ["a", "b", "c"]
    assert consumer.duplicates_dropped == 2
    assert [e.offset for e in got] == [0, 1, 3] and {e.topic for e in got} == {topic}
    consumer.commit(got)  # covers the trailing repeat at offset 4 too
    consumer.close()

    probe = Consumer({"bootstrap.servers": tansu_broker, "group.id": group})
    assert probe.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 5
    probe.close()

    produce_raw(tansu_broker, topic, ["d"])
    again = EventConsumer(tansu_broker, topic, group, TANSU_GROUP_PROPS)
    assert [e.event_id for e in drain(again, 1)] == ["d"]
    again.close()


def test_event_consumer_commits_only_what_was_processed(tansu_broker: str) -> None:
    topic, group = unique_name("events"), unique_name("sink")
    create_topic(tansu_broker, topic, partitions=1)
    produce_raw(tansu_broker, topic, ["a", "b", "c"])
    consumer = EventConsumer(tansu_broker, topic, group, TANSU_GROUP_PROPS)
    got = drain(consumer, 3)
    consumer.commit(got[:1])
    consumer.close()
    again = EventConsumer(tansu_broker, topic, group, TANSU_GROUP_PROPS)
    assert [e.event_id for e in drain(again, 2)] == ["b", "c"]
    again.close()
