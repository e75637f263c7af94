"""ClickHouse schema evolution against the real engine (chDB): migrations in order equal a fresh rendering,
and a database set up by release 31d926e upgrades with `fleetforge analytics apply`, keeping its events.

chDB holds one data dir per process: each store is closed before the next opens or the CLI runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.readers.clickhouse import schema
from fleetforge.adapters.readers.clickhouse.backends import chdb_dir
from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.stores.sqlfiles import split_statements
from fleetforge.core.analytics.tables import render_raw_migration
from tests.integration.clickhouse_fleet import derived

OLD_VIEWS = Path(__file__).resolve().parents[1] / "fixtures" / "clickhouse" / "materialized_views_31d926e.sql"
"""materialized_views.sql as released in 31d926e (its 0001 is the frozen first migration itself)."""


def _describe(store: ChdbAnalytics, database: str) -> dict[str, Any]:
    """Every table and view of a database as ClickHouse describes it: columns in order, engine, SELECT."""
    tables = {}
    for name, engine, select in store.rows("SELECT name, engine_full, as_select FROM system.tables "
                                           "WHERE database = {db:String} AND name != 'schema_migrations'",
                                           {"db": database}):
        cols = store.rows("SELECT name, type, default_expression FROM system.columns WHERE database = {db:String} "
                          "AND table = {t:String} ORDER BY position", {"db": database, "t": name})
        tables[str(name)] = (str(engine), str(select).replace(f"{database}.", "DB."), [tuple(c) for c in cols])
    return tables


def test_migrations_in_order_create_what_the_current_catalog_renders_fresh(tmp_path: Path) -> None:
    store = ChdbAnalytics(tmp_path / "clickhouse")
    try:
        report = schema.apply_schema(store)
        assert report.applied == ["0001_raw_events", "0002_catalog_upgrade"] and report.version == 2
        fresh = render_raw_migration().replace("telemetry", "fresh")
        for statement in split_statements(fresh):
            store.execute(statement)
        upgraded, want = _describe(store, "telemetry"), _describe(store, "fresh")
        assert {n: upgraded[n] for n in want} == want
        assert "actor" in [c[0] for c in want["step_events"][2]]
    finally:
        store.close()


def _envelope(kind: str, run: str, step: str = "", **payload: Any) -> tuple[str, str]:
    eid = str(uuid.uuid4())
    env = {"id": eid, "kind": kind, "schema_version": 1, "occurred_at": "2026-03-04T05:06:07.000001Z",
           "run_id": run, "step_id": step, "attempt": 1, "workspace": "ws", "app": "app",
           "trace": {"trace_id": "0" * 32, "span_id": "1" * 16, "traceparent": ""}, "payload": payload}
    return eid, json.dumps(env)


OLD_EVENTS = [
    _envelope("run_submitted", "r1", status="queued", slo_tier="standard", steps=2),
    _envelope("run_succeeded", "r1", status="succeeded", slo_tier="standard", duration_ms=12.5),
    _envelope("step_succeeded", "r1", "a", step_type="tool", slo_tier="standard", tokens=7, cost_usd=0.25,
              tool="search", provider="python"),
    _envelope("step_failed", "r1", "b", step_type="tool", slo_tier="standard", error_kind="timeout", final=True,
              tool="search", provider="python"),
    _envelope("tool_call", "r1", "a", step_type="tool", tool="search", provider="python", ok=True, latency_ms=3.0),
    _envelope("policy_decision", "r1", "a", step_type="tool", pack="pii", hook="pre", effect="allow"),
]
NEW_EVENTS = [
    _envelope("approval_granted", "r2", "gate", step_type="approval", slo_tier="standard", actor="ana",
              wait_ms=1500.0),
    _envelope("policy_decision", "r2", "gate", step_type="approval", pack="human_approval", hook="pre",
              effect="allow", wait_ms=1500.0),
    _envelope("run_paused", "r2", status="paused", actor="ana", breakpoint="gate"),
]


def _fleetforge(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", "from fleetforge.adapters.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "FLEETFORGE_CLICKHOUSE_URL": ""})
    assert done.returncode == 0, done.stderr
    return done


def _state(store: ChdbAnalytics) -> dict[str, Any]:
    return {**derived(store), "waits": store.rows(
        "SELECT pack, sum(wait_ms_sum), max(wait_ms_max) FROM telemetry.policy_decision_rates GROUP BY ALL")}


def test_a_31d926e_database_upgrades_keeps_its_events_and_backfills_like_a_fresh_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = ChdbAnalytics(tmp_path / "fresh")
    try:
        schema.apply_schema(fresh)
        fresh.insert_envelopes(OLD_EVENTS + NEW_EVENTS)
        want, want_schema = _state(fresh), _describe(fresh, "telemetry")
    finally:
        fresh.close()

    data_dir = tmp_path / "ff"
    old = ChdbAnalytics(chdb_dir(data_dir))
    try:
        with monkeypatch.context() as m:  # what `fleetforge analytics apply` of 31d926e did
            m.setattr(schema, "migrations", lambda: schema.sqlfiles.migrations(schema.PACKAGE)[:1])
            m.setattr(schema, "views_sql", OLD_VIEWS.read_text)
            assert schema.apply_schema(old).version == 1
        old.insert_envelopes(OLD_EVENTS)
    finally:
        old.close()

    applied = _fleetforge("analytics", "apply", "--data-dir", str(data_dir))
    assert "schema version 2 (migrations applied: 0002_catalog_upgrade)" in applied.stdout
    assert ("telemetry.policy_decision_rates, telemetry.policy_decision_rates_mv keep their old definition"
            in " ".join(applied.stderr.split()))
    store = ChdbAnalytics(chdb_dir(data_dir))
    try:
        assert store.rows("SELECT count() FROM telemetry.run_events")[0][0] == 2
        assert store.rows("SELECT count() FROM telemetry.step_events")[0][0] == 4
        store.insert_envelopes(NEW_EVENTS)
        assert store.rows("SELECT actor, wait_ms FROM telemetry.step_events WHERE kind = 'approval_granted'") == [
            ("ana", 1500.0)]
        assert store.rows("SELECT actor, breakpoint FROM telemetry.run_events WHERE kind = 'run_paused'") == [
            ("ana", "gate")]
        assert store.rows("SELECT count() FROM telemetry.rejected_events")[0][0] == 0
    finally:
        store.close()

    rebuilt = _fleetforge("analytics", "apply", "--rebuild-changed", "--data-dir", str(data_dir))
    assert "rebuilt and backfilled: telemetry.policy_decision_rates" in rebuilt.stdout and not rebuilt.stderr
    again = _fleetforge("analytics", "apply", "--data-dir", str(data_dir))
    assert "none pending" in again.stdout and not again.stderr
    _fleetforge("analytics", "backfill", "--data-dir", str(data_dir))
    store = ChdbAnalytics(chdb_dir(data_dir))
    try:
        assert _describe(store, "telemetry") == want_schema
        assert _state(store) == want
        assert sorted(want["waits"]) == [("human_approval", 1500.0, 1500.0), ("pii", 0.0, 0.0)]
    finally:
        store.close()


def test_rebuild_changed_re_derives_only_the_changed_view_s_table(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A view whose SELECT changed (table unchanged) is named, re-created and its table backfilled; a
    retyped table is named; the other derived tables keep their rows untouched."""
    text = schema.views_sql()
    skewed = text.replace("FROM telemetry.step_events\nWHERE kind = 'tool_call'",
                          "FROM telemetry.step_events\nWHERE kind = 'tool_call' AND ok")
    retyped = text.replace("    error_kind LowCardinality(String),\n    calls SimpleAggregateFunction",
                           "    error_kind String,\n    calls SimpleAggregateFunction")
    assert skewed != text and retyped != text
    failed_call = _envelope("tool_call", "r1", "b", step_type="tool", tool="search", provider="python", ok=False,
                            error_kind="timeout", latency_ms=9.0)
    store = ChdbAnalytics(tmp_path / "clickhouse")
    try:
        with monkeypatch.context() as m:
            m.setattr(schema, "views_sql", lambda: skewed)
            schema.apply_schema(store)
        store.insert_envelopes([*OLD_EVENTS, failed_call])
        assert derived(store)["tools"] == [("search", "python", "", 1)]  # the skewed view missed the failure
        assert schema.changed_views(store, retyped) == ["telemetry.tool_error_taxonomy",  # and the live view
                                                        "telemetry.tool_error_taxonomy_mv"]  # is the skewed one
        before = {t: store.rows(f"SELECT count() FROM {t}")[0][0] for t in schema.derived_tables()}
        kept = schema.apply_schema(store)
        assert kept.changed == ["telemetry.tool_error_taxonomy_mv"] and kept.rebuilt == [] and kept.warnings
        report = schema.apply_schema(store, rebuild_changed=True)
        assert report.rebuilt == ["telemetry.tool_error_taxonomy"] and report.warnings == []
        assert derived(store)["tools"] == [("search", "python", "", 1), ("search", "python", "timeout", 1)]
        assert {t: store.rows(f"SELECT count() FROM {t}")[0][0] for t in schema.derived_tables()
                if t != "telemetry.tool_error_taxonomy"} == {
            t: n for t, n in before.items() if t != "telemetry.tool_error_taxonomy"}
        assert schema.changed_views(store) == [] and schema.apply_schema(store).changed == []
    finally:
        store.close()
