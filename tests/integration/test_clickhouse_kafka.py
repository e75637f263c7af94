"""The sink's Kafka source against a real Kafka-protocol broker (Tansu), into real chDB.

Every event is published twice (as an at-least-once forwarder may), and the sink crashes once
between its insert and its offset commit; the derived tables must still equal the ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Producer

from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.kafka_source import KafkaSource
from fleetforge.adapters.readers.clickhouse.schema import apply_schema
from fleetforge.adapters.readers.clickhouse.sink import Sink, SinkConfig
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.domain.names import KafkaHeader
from fleetforge.ports.analytics import SourceEvent
from tests.fixtures.kafka import (  # noqa: F401 (tansu_broker is a fixture)
    TANSU_GROUP_PROPS,
    create_topic,
    tansu_broker,
    unique_name,
)
from tests.integration.clickhouse_fleet import assert_exact, open_store, run_fleet

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbAnalytics]:
    store = ChdbAnalytics(tmp_path / "clickhouse")
    apply_schema(store)
    yield store
    store.close()


class _Crash(Exception):
    pass


def _drain_until(sink: Sink, expected: int, rounds: int = 200) -> None:
    """Poll (Tansu joins the group after a few seconds) until `expected` events were polled and flushed."""
    for _ in range(rounds):
        sink.poll_once(0.5)
        if sink.pending:
            sink.flush()
        if sink.stats.polled >= expected and not sink.pending:
            return
    raise AssertionError(f"polled {sink.stats.polled} of {expected} events")


def test_kafka_source_with_duplicates_and_a_crash_before_the_offset_commit(
        tmp_path: Path, chdb: ChdbAnalytics, tansu_broker: str) -> None:  # noqa: F811
    store = open_store(tmp_path / "state.db")
    run_fleet(store, runs=30, seed=31)
    records = list(store.iter_outbox())
    topic, group = unique_name("events"), unique_name("ch-sink")
    create_topic(tansu_broker, topic, partitions=3)
    producer = Producer({"bootstrap.servers": tansu_broker, "enable.idempotence": "true"})
    for _copy in range(2):  # every event twice, as a forwarder retrying after a crash would
        for r in records:
            producer.produce(topic, key=r.run_id.encode(), value=r.envelope.encode(),
                             headers=[(KafkaHeader.EVENT_ID, r.event_id.encode()), (KafkaHeader.KIND, r.kind.encode())])
        producer.flush(30)

    props = {**TANSU_GROUP_PROPS, "max.poll.interval.ms": "60000"}
    first = KafkaSource.connect(tansu_broker, topic, group, props, dedup_window=0)  # no consumer-side de-dup
    commits = 0

    def crash(events: Sequence[SourceEvent]) -> None:
        nonlocal commits
        commits += 1
        raise _Crash

    first.commit = crash  # type: ignore[method-assign]
    sink = Sink(first, EnvelopeWriter(chdb), SinkConfig(batch_size=400))
    with pytest.raises(_Crash):
        _drain_until(sink, 2 * len(records))  # the first batch is inserted, its offsets never committed
    assert commits == 1 and sink.stats.inserted == 0  # stats only count committed flushes
    stored = chdb.rows("SELECT count() FROM telemetry.event_ids")[0][0]
    assert stored > 0
    first.close()

    second = KafkaSource.connect(tansu_broker, topic, group, props, dedup_window=0)
    restarted = Sink(second, EnvelopeWriter(chdb), SinkConfig(batch_size=400))
    try:
        _drain_until(restarted, 2 * len(records))
    finally:
        second.close()
    assert restarted.stats.duplicates >= len(records)  # the second copies, and the re-delivered first batch
    assert restarted.stats.inserted + stored == len(records)
    assert_exact(store, chdb)
