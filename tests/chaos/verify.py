"""Compare the derived ClickHouse tables (chDB data dir) with the ground truth in PostgreSQL; print JSON.

Run as `python -m tests.chaos.verify --store URL --data-dir D --bootstrap B` once the sink process is
stopped (a chDB data dir has one owner). It first lets the same sink code catch up on what is left in
Kafka (as the sink's consumer group), counting how many events that took, then compares:
raw events stored vs outbox rows (lost / extra), repeats of an event id (double-counted), every
derived breakdown vs `truth(store)`, and runs not terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fleetforge.adapters.readers.clickhouse.backends import open_analytics
from fleetforge.adapters.readers.clickhouse.kafka_source import KafkaSource
from fleetforge.adapters.readers.clickhouse.schema import apply_schema
from fleetforge.adapters.readers.clickhouse.sink import Sink, SinkConfig
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.adapters.stores.postgres.store import PostgresStore
from tests.fixtures.kafka import TANSU_GROUP_PROPS
from tests.integration.clickhouse_fleet import derived, truth

__all__ = ["compare", "main"]

_RAW = ("SELECT count(), uniqExact(event_id) FROM (SELECT event_id FROM telemetry.run_events "
        "UNION ALL SELECT event_id FROM telemetry.step_events)")


def _stored(analytics: Any) -> tuple[int, int]:
    (n, distinct), = analytics.rows(_RAW)
    return int(n), int(distinct)


def compare(store: PostgresStore, analytics: Any) -> dict[str, Any]:
    """Mismatch counts of the derived tables and raw events against the store."""
    outbox_ids = {r.event_id for r in store.iter_outbox()}
    rows, distinct = _stored(analytics)
    ids = {str(i) for i, in analytics.rows("SELECT DISTINCT event_id FROM telemetry.event_ids")}
    want, got = truth(store), derived(analytics)
    mismatched = [k for k in ("runs", "attempts", "budget", "decisions", "tools", "agents") if got[k] != want[k]]
    return {
        "outbox_events": len(outbox_ids),
        "stored_events": rows,
        "lost": len(outbox_ids - ids),
        "unknown": len(ids - outbox_ids),
        "double_counted": rows - distinct,
        "derived_mismatches": mismatched,
        "derived_diff": {k: {"derived": got[k], "truth": want[k]} for k in mismatched},
        "open_runs": store.count_open_runs(),
        "runs": want["runs"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", required=True)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", default="fleetforge.events")
    p.add_argument("--group", default="fleetforge-clickhouse-sink")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    store = PostgresStore(a.store)
    analytics = open_analytics(data_dir=a.data_dir)
    try:
        apply_schema(analytics)
        outbox = sum(1 for _ in store.iter_outbox())
        before, _ = _stored(analytics)
        caught_up = 0
        if before < outbox and a.timeout > 0:
            source = KafkaSource.connect(a.bootstrap, a.topic, a.group, dict(TANSU_GROUP_PROPS))
            sink = Sink(source, EnvelopeWriter(analytics), SinkConfig(flush_interval_s=0.2))
            deadline = time.monotonic() + a.timeout
            try:
                while _stored(analytics)[0] < outbox and time.monotonic() < deadline:
                    sink.poll_once(0.5)
                    if sink.due():
                        caught_up += sink.flush()
                caught_up += sink.flush()
            finally:
                source.close()
        result = compare(store, analytics)
        result["caught_up_by_verifier"] = caught_up
        result["stored_before_verifier"] = before
    finally:
        analytics.close()
        store.close()
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
