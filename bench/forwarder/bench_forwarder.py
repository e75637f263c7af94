"""Outbox -> broker throughput of the forwarder beside a raw confluent-kafka producer, and peak RSS.

Everything runs against one Tansu broker (memory storage) started by this script on a loopback
port. The raw producer sends exactly the messages the forwarder sends (same key, value, headers,
same producer settings: idempotent, acks=all) to the same broker, in the same script; each
measurement gets a topic of its own and the best of `--rounds` rounds is kept.

    python bench/forwarder/bench_forwarder.py                 # 100k events, 1M-event backlog RSS
    python bench/forwarder/bench_forwarder.py --backlog 0     # throughput only

Targets: at-least-once >= 0.7x raw, transactional >= 0.5x raw, peak RSS <= 300 MB with a
1M-event backlog.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from tests.fixtures.kafka import TansuBroker, create_topic, envelopes, unique_name  # noqa: E402

from fleetforge.adapters.readers.kafka.bus_config import BusConfig  # noqa: E402
from fleetforge.adapters.readers.kafka.forwarder import Forwarder  # noqa: E402
from fleetforge.adapters.readers.kafka.publishers import headers  # noqa: E402
from fleetforge.adapters.stores.sqlite.store import SqliteStore  # noqa: E402

RSS_CHILD = r"""
import sys, time
from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.forwarder import Forwarder
from fleetforge.adapters.stores.sqlite.store import SqliteStore

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0

path, bootstrap, topic, tid, consumer = sys.argv[1:6]
store = SqliteStore(path)
cfg = BusConfig(bootstrap_servers=bootstrap, topic=topic, transactional_id=tid or None, topic_partitions=3,
                outbox_consumer=consumer, instance_id=consumer)
fwd = Forwarder(store, cfg)
store.get_cursor(cfg.outbox_consumer)
before = hwm_mb()
t0 = time.monotonic()
stats = fwd.run(until_idle=True)
print(f"{before:.1f} {hwm_mb():.1f} {stats.sent} {time.monotonic() - t0:.2f}")
"""


def fill(path: Path, n: int, pad: int) -> None:
    store = SqliteStore(path)
    store.migrate()
    step = 5_000
    for start in range(0, n, step):
        with store.transaction() as tx:
            tx.append_events(envelopes(min(step, n - start), start=start, runs=97, pad=pad))
    store.close()


def raw_rate(bootstrap: str, path: Path, partitions: int) -> float:
    """Events/s of a plain idempotent producer sending the forwarder's messages."""
    store = SqliteStore(path)
    cfg = BusConfig(bootstrap_servers=bootstrap, topic=unique_name("raw"))
    create_topic(bootstrap, cfg.topic, partitions)
    conf, _ = cfg.producer_config()
    messages = [{"topic": cfg.topic, "value": r.envelope, "key": r.run_id, "headers": headers(r)}
                for r in store.iter_outbox()]
    store.close()
    producer = Producer(conf)
    started = time.perf_counter()
    for i, kwargs in enumerate(messages):
        while True:
            try:
                producer.produce(**kwargs)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    assert left == 0, f"{left} messages not delivered"
    return len(messages) / elapsed


def forwarder_rate(bootstrap: str, path: Path, partitions: int, transactional: bool, batch: int) -> tuple[float, float]:
    """(events/s from start-up to the last published batch, events/s from the first batch to the last)."""
    store = SqliteStore(path)
    consumer = unique_name("bench")
    cfg = BusConfig(bootstrap_servers=bootstrap, topic=unique_name("fwd"), outbox_consumer=consumer,
                    instance_id=consumer, transactional_id=unique_name("tx") if transactional else None,
                    batch_size=batch)
    create_topic(bootstrap, cfg.topic, partitions)
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    stats = Forwarder(store, cfg, after_publish=lambda pos: marks.append((time.perf_counter(), pos[1]))).run(
        until_idle=True)
    store.close()
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return stats.sent / (t1 - started), (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0


def peak_rss(bootstrap: str, path: Path, transactional: bool) -> tuple[float, float, int, float]:
    topic = unique_name("rss")
    create_topic(bootstrap, topic, 3)
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), bootstrap, topic,
                          unique_name("tx") if transactional else "", unique_name("rss")],
                         capture_output=True, text=True, timeout=900, check=True)
    before, peak, sent, seconds = out.stdout.split()
    return float(before), float(peak), int(sent), float(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the best of each is kept")
    parser.add_argument("--pad", type=int, default=400, help="payload padding bytes (envelope ~ pad + 450)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="outbox rows per read / per transaction")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="backlog for the RSS run; 0 skips it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    results: dict[str, float] = {}
    steady: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, TansuBroker() as broker:
        bootstrap = broker.bootstrap
        db = Path(tmp) / "bench.db"
        fill(db, args.events, args.pad)
        size = SqliteStore(db).read_outbox((0, 0), 1)[0].envelope
        print(f"broker: Tansu at {bootstrap} (memory storage); {args.events} events of {len(size)} bytes, "
              f"{args.partitions} partitions, batch {args.batch}")
        runs: dict[str, Any] = {
            "at-least-once": lambda: forwarder_rate(bootstrap, db, args.partitions, False, args.batch),
            "transactional": lambda: forwarder_rate(bootstrap, db, args.partitions, True, args.batch),
        }
        for _ in range(args.rounds):
            results["raw producer"] = max(results.get("raw producer", 0.0), raw_rate(bootstrap, db, args.partitions))
            for name, run in runs.items():
                total, steady_rate = run()
                results[name] = max(results.get(name, 0.0), total)
                steady[name] = max(steady.get(name, 0.0), steady_rate)
        raw = results["raw producer"]
        targets = {"at-least-once": ">= 0.70x", "transactional": ">= 0.50x"}
        print(f"{'mode':<16}{'events/s':>12}{'x raw':>8}{'steady/s':>12}{'x raw':>8}  target")
        print(f"{'raw producer':<16}{raw:>12,.0f}{1:>8.2f}")
        for name in runs:
            print(f"{name:<16}{results[name]:>12,.0f}{results[name] / raw:>8.2f}{steady[name]:>12,.0f}"
                  f"{steady[name] / raw:>8.2f}  {targets[name]}")
        print("events/s: from start-up (topic check, lease, producer) to the last published batch; "
              "steady/s: from the first published batch to the last.")

        if args.backlog:
            big = Path(tmp) / "backlog.db"
            t0 = time.perf_counter()
            fill(big, args.backlog, args.pad)
            print(f"\nbacklog of {args.backlog:,} events written in {time.perf_counter() - t0:.0f}s; "
                  "peak RSS of a forwarder process draining it (target <= 300 MB):")
            for transactional in (False, True):
                before, peak, sent, seconds = peak_rss(bootstrap, big, transactional)
                mode = "transactional" if transactional else "at-least-once"
                print(f"{mode:<16} peak {peak:6.0f} MB  (baseline before forwarding {before:.0f} MB); "
                      f"{sent:,} events in {seconds:.0f}s = {sent / seconds:,.0f}/s")


if __name__ == "__main__":
    main()
