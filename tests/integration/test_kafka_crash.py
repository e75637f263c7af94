"""Crash tests: a forwarder process SIGKILLed at random points, 20 times per delivery mode, on Tansu.

While a feeder keeps appending events, a forwarder subprocess is started and killed, again and
again; some kills land exactly between a Kafka commit and the cursor update (the process kills
itself there). Afterwards every event must be on the topic at least once and, through the
de-duplicating consumer, exactly once; in transactional mode no event of a transaction that
committed before a kill may be published again by the next process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from fleetforge.adapters.readers.kafka.consumer import EventConsumer
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.names import KafkaHeader
from tests.fixtures import kafka as kafka_fixtures
from tests.fixtures.kafka import (
    TANSU_GROUP_PROPS,
    RawMessage,
    create_topic,
    envelopes,
    unique_name,
)

tansu_broker = kafka_fixtures.tansu_broker
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TRIALS = 20
CONSUMER = "kafka-forwarder"

CHILD = r"""
import os, signal, sys
from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.forwarder import Forwarder
from fleetforge.adapters.stores.sqlite.store import SqliteStore

path, bootstrap, topic, tid, kill_after = sys.argv[1:6]
commits = 0

def hook(_position):
    global commits
    commits += 1
    if commits == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)  # after the broker has the batch, before the cursor moves

cfg = BusConfig(bootstrap_servers=bootstrap, topic=topic, transactional_id=tid or None, batch_size=100,
                max_in_flight=400, instance_id="crash-forwarder", lease_ttl_ms=3000, poll_interval_ms=20,
                create_topic=False)
Forwarder(SqliteStore(path), cfg, after_publish=hook if int(kill_after) else None).run()
"""


class Tail:
    """Reads what was appended to a topic since the previous call (uncached offsets are wrong on Tansu)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("tail"),
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                                  "isolation.level": "read_uncommitted"})
        self.tps = [TopicPartition(topic, p, 0) for p in range(partitions)]
        self.consumer.assign(self.tps)

    def read_new(self, timeout_s: float = 30) -> list[RawMessage]:
        out: list[RawMessage] = []
        deadline = time.monotonic() + timeout_s
        quiet_until = time.monotonic() + 0.5
        while True:
            batch = self.consumer.consume(num_messages=10_000, timeout=0.2)
            for msg in batch:
                if msg.error() is None:
                    out.append(RawMessage(int(msg.partition() or 0), int(msg.offset() or 0), "", "",
                                          {k: (v or b"").decode() for k, v in (msg.headers() or [])}))
            positions = {tp.partition: tp.offset for tp in self.consumer.position(self.tps)}
            highs = {tp.partition: self.consumer.get_watermark_offsets(tp, cached=True)[1] for tp in self.tps}
            caught_up = all(h >= 0 and (h == 0 or positions[p] >= h) for p, h in highs.items())
            if caught_up and time.monotonic() > quiet_until and not batch:
                return out
            assert time.monotonic() < deadline, "could not read the topic to its end"

    def close(self) -> None:
        self.consumer.close()


def committed_checkpoint(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return int(consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        consumer.close()


@pytest.fixture
def feeding(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A SQLite outbox that receives 100 events every 50 ms until the event is set."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.migrate()
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.is_set():
            with store.transaction() as tx:
                tx.append_events(envelopes(100, start=n, runs=13))
            n += 100
            stop.wait(0.05)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield path, stop
    stop.set()
    thread.join(10)
    store.close()


def start(path: Path, bootstrap: str, topic: str, tid: str, kill_after: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(path), bootstrap, topic, tid, str(kill_after)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("transactional", [False, True], ids=["at-least-once", "transactional"])
def test_sigkill_at_random_points(tansu_broker: str, feeding: tuple[Path, threading.Event], tmp_path: Path,
                                  transactional: bool) -> None:
    path, stop_feeding = feeding
    topic = unique_name("crash")
    create_topic(tansu_broker, topic, partitions=3)
    tid = unique_name("tx") if transactional else ""
    group = f"fleetforge-forwarder.{topic}.{CONSUMER}"
    rng = random.Random(20_240_611 + transactional)
    store = SqliteStore(path)
    tail = Tail(tansu_broker, topic, 3)
    log = tmp_path / "forwarder.log"
    published: list[list[RawMessage]] = []  # messages appended while process k ran
    checkpoints: list[int] = []  # committed checkpoint seq right after kill k
    self_kills = 0
    for trial in range(TRIALS):
        kill_after = rng.randint(1, 4) if trial % 4 == 3 else 0
        proc = start(path, tansu_broker, topic, tid, kill_after, log)
        if kill_after:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self_kills += proc.returncode == -signal.SIGKILL
        else:
            time.sleep(rng.uniform(0.5, 1.5))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(0.2)
        published.append(tail.read_new())
        checkpoints.append(committed_checkpoint(tansu_broker, group, topic) if transactional else -1)
    assert self_kills == TRIALS // 4, f"the forwarder did not reach its kill point; see {log}"

    # Stop feeding, and let one last forwarder drain the outbox.
    stop_feeding.set()
    time.sleep(0.2)
    proc = start(path, tansu_broker, topic, tid, 0, log)
    deadline = time.monotonic() + 60
    outbox = list(store.iter_outbox())
    while store.get_cursor(CONSUMER) != outbox[-1].position:
        assert time.monotonic() < deadline, f"the last forwarder did not drain the outbox; see {log}"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    published.append(tail.read_new())
    tail.close()

    seq_of = {r.event_id: r.position[1] for r in outbox}
    every = [m.headers[KafkaHeader.EVENT_ID] for batch in published for m in batch]
    assert set(every) == set(seq_of), "an event never reached the topic"
    assert sum(len(b) for b in published[:-1]) > 0

    if transactional:
        recoveries = log.read_text(errors="replace").count("is behind the last committed transaction")
        assert recoveries >= self_kills, "restarts did not move the cursor to the committed checkpoint"
        for k, checkpoint in enumerate(checkpoints):
            later = {m.headers[KafkaHeader.EVENT_ID] for batch in published[k + 1:] for m in batch}
            again = [e for e in later if seq_of[e] <= checkpoint]
            assert not again, f"trial {k}: {len(again)} events of committed transactions were published again"

    # Through the de-duplicating consumer, each event arrives exactly once.
    consumer = EventConsumer(tansu_broker, topic, unique_name("sink"), TANSU_GROUP_PROPS, dedup_window=len(every) + 1)
    got: list[str] = []
    deadline = time.monotonic() + 60
    while len(got) < len(seq_of) and time.monotonic() < deadline:
        got += [e.event_id for e in consumer.poll_batch(5_000, 0.5)]
    got += [e.event_id for e in consumer.poll_batch(5_000, 1.0)]
    consumer.close()
    assert len(got) == len(set(got)) == len(seq_of)
    store.close()
