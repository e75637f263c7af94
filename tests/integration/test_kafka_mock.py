"""Broker errors the forwarder must survive, injected with librdkafka's mock cluster.

Tansu cannot be told to fail a given request, so each error class (retriable, abortable, fatal or
fenced, timed out) is provoked here with the mock cluster's error injection and broker up/down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.forwarder import Forwarder
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.names import KafkaHeader
from fleetforge.ports.store import OutboxPosition
from tests.fixtures.kafka import MockCluster, envelopes, read_topic, unique_name
from tests.support import need

pytestmark = pytest.mark.timeout(120)

# Kafka protocol API keys and error codes used below.
PRODUCE, END_TXN = 0, 26
MESSAGE_TOO_LARGE, NOT_ENOUGH_REPLICAS, NOT_COORDINATOR = 10, 19, 16
CONCURRENT_TRANSACTIONS, PRODUCER_FENCED = 51, 90
EVENTS = 600


@pytest.fixture
def mock() -> Iterator[MockCluster]:
    try:
        cluster = MockCluster()
    except (OSError, RuntimeError) as exc:
        need(False, f"librdkafka's mock cluster ({exc})")
        raise
    yield cluster
    cluster.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    with store.transaction() as tx:
        tx.append_events(envelopes(EVENTS))
    yield store
    store.close()


def forwarder(mock: MockCluster, store: SqliteStore, *, transactional: bool, **hooks: Any) -> Forwarder:
    topic = unique_name("events")
    mock.create_topic(topic, 3)
    props = {"transaction.timeout.ms": "5000"} if transactional else {"message.timeout.ms": "3000"}
    cfg = BusConfig(bootstrap_servers=mock.bootstrap, topic=topic, batch_size=200, max_in_flight=200,
                    call_timeout_ms=2_000, client_props=props,
                    transactional_id=unique_name("tx") if transactional else None)
    fwd = Forwarder(store, cfg, **hooks)
    fwd.backoff.max_s = 0.5
    return fwd


def delivered(mock: MockCluster, fwd: Forwarder, store: SqliteStore) -> list[str]:
    """Event ids on the topic; asserts every outbox row is there and the cursor reached the end."""
    got = [m.headers[KafkaHeader.EVENT_ID] for m in read_topic(mock.bootstrap, fwd.config.topic)]
    outbox = list(store.iter_outbox())
    assert set(got) == {r.event_id for r in outbox}
    assert store.get_cursor(fwd.config.outbox_consumer) == outbox[-1].position
    return got


def test_fenced_producer_is_recreated_and_the_batch_sent_again(mock: MockCluster, outbox: SqliteStore) -> None:
    fwd = forwarder(mock, outbox, transactional=True)
    mock.push_errors(END_TXN, PRODUCER_FENCED)
    stats = fwd.run(until_idle=True)
    assert stats.producers == 2
    assert stats.failed == 200 and stats.retried == 200
    assert stats.sent == EVENTS
    delivered(mock, fwd, outbox)


def test_abortable_error_aborts_and_resends_with_the_same_producer(mock: MockCluster, outbox: SqliteStore) -> None:
    fwd = forwarder(mock, outbox, transactional=True)
    mock.push_errors(PRODUCE, MESSAGE_TOO_LARGE)
    stats = fwd.run(until_idle=True)
    assert stats.producers == 1
    assert stats.failed >= 200
    assert stats.sent == EVENTS
    delivered(mock, fwd, outbox)


def test_retriable_commit_errors_are_retried_without_resending(mock: MockCluster, outbox: SqliteStore) -> None:
    fwd = forwarder(mock, outbox, transactional=True)
    mock.push_errors(END_TXN, NOT_COORDINATOR, CONCURRENT_TRANSACTIONS, NOT_COORDINATOR)
    stats = fwd.run(until_idle=True)
    assert (stats.failed, stats.retried, stats.producers) == (0, 0, 1)
    assert sorted(delivered(mock, fwd, outbox)) == sorted(r.event_id for r in outbox.iter_outbox())


def broker_down_after_first_batch(mock: MockCluster, seconds: float) -> Any:
    calls: list[OutboxPosition] = []

    def hook(position: OutboxPosition) -> None:
        calls.append(position)
        if len(calls) == 1:
            mock.broker_down()
            threading.Timer(seconds, mock.broker_up).start()

    return hook


def test_transaction_timeout_is_treated_as_abortable(mock: MockCluster, outbox: SqliteStore) -> None:
    fwd = forwarder(mock, outbox, transactional=True, after_publish=broker_down_after_first_batch(mock, 6))
    stats = fwd.run(until_idle=True)
    assert stats.failed >= 200  # the batch in flight when the broker went away
    assert stats.sent == EVENTS
    delivered(mock, fwd, outbox)


def test_at_least_once_resends_a_chunk_after_a_failed_delivery(mock: MockCluster, outbox: SqliteStore) -> None:
    fwd = forwarder(mock, outbox, transactional=False)
    mock.push_errors(PRODUCE, MESSAGE_TOO_LARGE)
    stats = fwd.run(until_idle=True)
    assert stats.failed > 0 and stats.retried == 200
    got = delivered(mock, fwd, outbox)
    assert len(got) <= EVENTS + 200


def test_at_least_once_retriable_errors_stay_inside_the_client(mock: MockCluster, outbox: SqliteStore) -> None:
    fwd = forwarder(mock, outbox, transactional=False)
    mock.push_errors(PRODUCE, NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS)
    stats = fwd.run(until_idle=True)
    assert (stats.failed, stats.retried) == (0, 0)
    assert len(delivered(mock, fwd, outbox)) == EVENTS


def test_at_least_once_survives_messages_timing_out_while_the_broker_is_down(
    mock: MockCluster, outbox: SqliteStore
) -> None:
    fwd = forwarder(mock, outbox, transactional=False, after_publish=broker_down_after_first_batch(mock, 5))
    stats = fwd.run(until_idle=True)
    assert stats.failed > 0
    assert stats.sent == EVENTS
    delivered(mock, fwd, outbox)
