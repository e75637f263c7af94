"""Embedded analytics against the real ClickHouse engine (chDB): schema, ground truth, exactly-once.

Fleets run on the real runtime in-process; the derived tables must equal the ground truth exactly.
chDB holds one data dir per process, so every test closes its store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.embedded import EmbeddedAnalytics
from fleetforge.adapters.readers.clickhouse.schema import apply_schema, backfill, derived_tables, schema_version
from fleetforge.adapters.readers.clickhouse.sink import SinkConfig
from fleetforge.adapters.readers.clickhouse.sink_reader import OutboxSink
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter, WriteResult
from fleetforge.core.analytics.tables import ENVELOPE_COLUMNS, payload_columns
from fleetforge.ports.analytics import AnalyticsError, AnalyticsUnavailable, SourceEvent
from tests.integration.clickhouse_fleet import assert_exact, derived, open_store, run_fleet

GUIDE_TABLES = ["telemetry.run_latency_metrics", "telemetry.step_retry_heatmap", "telemetry.budget_burndown",
                "telemetry.policy_decision_rates", "telemetry.tool_error_taxonomy", "telemetry.agent_activity"]


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbAnalytics]:
    store = ChdbAnalytics(tmp_path / "clickhouse")
    apply_schema(store)
    yield store
    store.close()


def test_apply_is_idempotent_and_records_the_version(chdb: ChdbAnalytics) -> None:
    again = apply_schema(chdb)
    assert again.applied == [] and again.version == schema_version(chdb) == 2
    assert again.views == 7
    assert derived_tables() == GUIDE_TABLES
    rows = chdb.rows("SELECT version, name FROM telemetry.schema_migrations FINAL ORDER BY version")
    assert rows[0] == (1, "raw_events")


@pytest.mark.parametrize("scope,table", [("run", "run_events"), ("step", "step_events")])
def test_raw_tables_have_a_typed_column_per_catalog_field(chdb: ChdbAnalytics, scope: str, table: str) -> None:
    described = {str(r[0]): str(r[1]) for r in chdb.rows(f"DESCRIBE TABLE telemetry.{table}")}
    for column in payload_columns(scope):
        assert described.get(column.name) == column.ch_type, column.name
    for name, ch_type in ENVELOPE_COLUMNS:
        if not (scope == "run" and name == "step_id"):
            assert described[name] == ch_type
    assert described["attributes"].startswith("Map(") and described["payload"] == "String"


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_streamed_fleet_equals_ground_truth(tmp_path: Path, seed: int) -> None:
    store = open_store(tmp_path / "state.db")
    with EmbeddedAnalytics(tmp_path / "clickhouse") as analytics:
        analytics.apply()
        analytics.start(store)
        run_fleet(store, runs=45, seed=seed, cancel_every=9)
        stats = analytics.stop()
        assert stats is not None and stats.failures == 0
        want = assert_exact(store, analytics.analytics)
        assert sum(want["runs"].values()) == 45
        rejected = analytics.analytics.rows("SELECT count() FROM telemetry.rejected_events")[0][0]
        assert rejected == 0
        outbox = sum(1 for _ in store.iter_outbox())
        raw = analytics.analytics.rows("SELECT (SELECT count() FROM telemetry.run_events) + "
                                       "(SELECT count() FROM telemetry.step_events)")[0][0]
        assert raw == outbox


class _Twice(EnvelopeWriter):
    """A writer that gets every outbox event twice, in separate and in the same batches."""

    def write(self, events: Sequence[SourceEvent]) -> WriteResult:
        events = list(events)
        first = super().write(events + events[: len(events) // 2])  # duplicates inside the batch
        again = super().write(events)  # then the whole batch again
        return WriteResult(first.inserted + again.inserted, first.duplicates + again.duplicates)


def test_every_event_delivered_twice_changes_no_number(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    store = open_store(tmp_path / "state.db")
    run_fleet(store, runs=30, seed=5)
    sink = OutboxSink(store, _Twice(chdb), SinkConfig(batch_size=200))
    sink.drain()
    assert sink.stats.duplicates > sink.stats.inserted // 2
    assert_exact(store, chdb)


class _CrashAfterInsert(Exception):
    pass


def test_crash_between_insert_and_cursor_commit_changes_no_number(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    store = open_store(tmp_path / "state.db")
    run_fleet(store, runs=30, seed=8)
    original = store.set_cursor
    crashes = 0

    def crash(consumer: str, position: Any) -> None:
        nonlocal crashes
        crashes += 1
        raise _CrashAfterInsert

    store.set_cursor = crash  # type: ignore[method-assign]
    sink = OutboxSink(store, EnvelopeWriter(chdb), SinkConfig(batch_size=150))
    with pytest.raises(_CrashAfterInsert):
        sink.drain()  # the first batch is stored, its cursor never committed
    assert crashes == 1 and store.get_cursor("clickhouse-sink") == (0, 0)
    store.set_cursor = original  # type: ignore[method-assign]
    restarted = OutboxSink(store, EnvelopeWriter(chdb), SinkConfig(batch_size=150))
    restarted.drain()  # re-delivers the first batch: all of it is skipped
    assert restarted.stats.duplicates == 150
    assert_exact(store, chdb)
    backfill(chdb)
    assert_exact(store, chdb)


def test_backfill_twice_and_since_never_double(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    store = open_store(tmp_path / "state.db")
    run_fleet(store, runs=25, seed=13)
    OutboxSink(store, EnvelopeWriter(chdb)).drain()
    before = derived(chdb)
    for table in GUIDE_TABLES:  # the views only see new inserts: start from nothing
        chdb.execute(f"TRUNCATE TABLE {table}")
    report = backfill(chdb)
    assert set(report.tables) == set(GUIDE_TABLES)
    assert derived(chdb) == before
    backfill(chdb)
    assert derived(chdb) == before
    first = chdb.rows("SELECT min(occurred_at) FROM telemetry.step_events")[0][0]
    backfill(chdb, since=first)
    assert derived(chdb) == before
    assert_exact(store, chdb)


class _Flaky:
    """An analytics store that is down while `down` is set (as a server would be), else `inner`."""

    def __init__(self, inner: ChdbAnalytics) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.down = threading.Event()
        self.refused = 0

    def _check(self) -> None:
        if self.down.is_set():
            self.refused += 1
            raise AnalyticsUnavailable("ClickHouse is down (test)")

    def execute(self, sql: str, params: Any = None) -> None:
        self._check()
        self.inner.execute(sql, params)

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self._check()
        return self.inner.rows(sql, params)

    def text(self, sql: str, fmt: str, params: Any = None) -> str:
        self._check()
        return self.inner.text(sql, fmt, params)

    def insert_envelopes(self, batch: Sequence[tuple[str, str | bytes]]) -> None:
        self._check()
        self.inner.insert_envelopes(batch)

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        self._check()
        return self.inner.known_ids(ids)

    def close(self) -> None:
        self.inner.close()


def test_analytics_down_runtime_keeps_running_and_recovers_exactly(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    store = open_store(tmp_path / "state.db")
    flaky = _Flaky(chdb)
    flaky.down.set()
    sink = OutboxSink(store, EnvelopeWriter(flaky),
                      SinkConfig(flush_interval_s=0.05, retry_initial_s=0.05, retry_max_s=0.2))
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    started = time.monotonic()
    run_fleet(store, runs=30, seed=17)  # the runtime never waits for analytics
    assert time.monotonic() - started < 30
    assert store.count_open_runs() == 0
    backlog = store.outbox_backlog("clickhouse-sink")[0]
    assert backlog == sum(1 for _ in store.iter_outbox())  # nothing committed while down
    deadline = time.monotonic() + 20
    while not (flaky.refused > 0 and sink.stats.failures > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flaky.refused > 0 and sink.stats.failures > 0
    assert store.outbox_backlog("clickhouse-sink")[0] == backlog
    flaky.down.clear()  # recovery
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert store.outbox_backlog("clickhouse-sink")[0] == 0
    assert_exact(store, chdb)


def test_a_second_process_cannot_take_the_data_dir(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics\n"
            "from fleetforge.ports.analytics import AnalyticsUnavailable\n"
            f"try:\n    ChdbAnalytics({str(tmp_path / 'clickhouse')!r})\n"
            "except AnalyticsUnavailable as exc:\n    print(exc)\n    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "owned by one process" in done.stdout


def test_query_errors_are_translated(chdb: ChdbAnalytics) -> None:
    with pytest.raises(AnalyticsError, match=r"UNKNOWN_TABLE|does not exist"):
        chdb.rows("SELECT * FROM telemetry.no_such_table")
