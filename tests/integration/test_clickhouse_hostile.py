"""Hostile values are stored or rejected cleanly and never break a batch of good events (real chDB)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.schema import apply_schema
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.ports.analytics import SourceEvent
from tests.integration.clickhouse_fleet import assert_exact, open_store, run_fleet

NASTY = "acme'; DROP TABLE telemetry.step_events; -- \"quoted\" \\ back\\slash {param:String} \t tab"


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbAnalytics]:
    store = ChdbAnalytics(tmp_path / "clickhouse")
    apply_schema(store)
    yield store
    store.close()


def _envelope(kind: str = "tool_call", **over: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "id": str(uuid.uuid4()), "kind": kind, "schema_version": 1, "occurred_at": "2026-01-02T03:04:05.000006Z",
        "run_id": "r-hostile", "step_id": "s1", "attempt": 1, "workspace": "hostile", "app": "app",
        "trace": {"trace_id": "0" * 32, "span_id": "1" * 16, "traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"},
        "payload": {"step_type": "tool", "slo_tier": "standard", "tool": "t", "provider": "python", "ok": True,
                    "error_kind": "", "latency_ms": 1.5},
    }
    env.update(over)
    return env


def _event(env: dict[str, Any] | str | bytes, event_id: str | None = None) -> SourceEvent:
    if isinstance(env, dict):
        return SourceEvent(event_id or env["id"], json.dumps(env, ensure_ascii=False))
    return SourceEvent(event_id or str(uuid.uuid4()), env)


def test_hostile_values_never_break_a_batch_of_good_events(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    store = open_store(tmp_path / "state.db")
    run_fleet(store, runs=20, seed=21)
    good = [SourceEvent(r.event_id, r.envelope) for r in store.iter_outbox()]

    quoted = _envelope(app=NASTY, step_id="x'); DELETE FROM t; --")
    quoted["payload"]["tool"] = NASTY
    big = _envelope(kind="run_submitted", step_id=None)
    big["payload"] = {"status": "queued", "slo_tier": "gold", "steps": 1, "budget_tokens": 0, "budget_cost_usd": 0.0,
                      "labels": {"blob": "x" * 1_000_000}, "extra_attribute": "y" * 1_000_000}
    bad_utf8_id = str(uuid.uuid4())
    compact = json.dumps(_envelope(id=bad_utf8_id), separators=(",", ":")).encode()
    bad_utf8 = compact.replace(b'"tool":"t"', b'"tool":"t\xff\xfe"')
    assert b"t\xff\xfe" in bad_utf8  # raw invalid UTF-8 inside a string value
    surrogate_id = str(uuid.uuid4())
    surrogate = json.dumps(_envelope(id=surrogate_id), ensure_ascii=False).replace('"tool": "t"', '"tool": "t\udc80"')
    future = _envelope(occurred_at="9999-12-31T23:59:59.000000Z")
    ancient = _envelope(occurred_at="1970-01-01T00:00:00.000000Z")
    garbage_ts = _envelope(occurred_at="yesterday at noon")
    unknown = _envelope(kind="step_exploded")
    wrong_types = _envelope(attempt="three", payload={"step_type": ["tool"], "ok": "yes", "latency_ms": "fast",
                                                       "tool": {"nested": True}, "provider": 7})
    huge_numbers = _envelope(attempt=10**30)
    huge_numbers["payload"]["latency_ms"] = 1e308
    mismatch = _envelope()
    hostile = [
        _event(quoted), _event(big), SourceEvent(bad_utf8_id, bad_utf8), SourceEvent(surrogate_id, surrogate),
        _event(future), _event(ancient), _event(garbage_ts), _event(unknown), _event(wrong_types),
        _event(huge_numbers), _event(mismatch, event_id=str(uuid.uuid4())),
        _event("this is not JSON"), _event(b"\x00\x01\x02"), _event('{"id": "truncated'),
        _event(json.dumps(_envelope()).replace("1.5", "NaN")), _event(""),
    ]
    mixed = good[: len(good) // 2] + hostile + good[len(good) // 2:]
    result = EnvelopeWriter(chdb).write(mixed)
    assert result.inserted == len(mixed)

    assert_exact(store, chdb, "workspace != 'hostile'", hostile_tools=5)  # good events counted exactly once

    def one(sql: str, **params: Any) -> Any:
        return chdb.rows(sql, params)[0][0]

    assert one("SELECT app FROM telemetry.step_events WHERE event_id = {id:String}", id=quoted["id"]) == NASTY
    assert one("SELECT tool FROM telemetry.step_events WHERE event_id = {id:String}", id=quoted["id"]) == NASTY
    assert one("SELECT length(labels) FROM telemetry.run_events WHERE event_id = {id:String}",
               id=big["id"]) > 1_000_000
    assert one("SELECT length(attributes['extra_attribute']) FROM telemetry.run_events "
               "WHERE event_id = {id:String}", id=big["id"]) == 1_000_000
    assert one("SELECT tool FROM telemetry.step_events WHERE event_id = {id:String}", id=bad_utf8_id) == "t\ufffd\ufffd"
    hostile_calls = one("SELECT count() FROM telemetry.step_events WHERE kind = 'tool_call' AND workspace = 'hostile'")
    assert hostile_calls == 5  # quoted, invalid UTF-8, surrogate, wrong types, huge numbers: stored
    assert one("SELECT startsWith(tool, 't') FROM telemetry.step_events WHERE event_id = {id:String}",
               id=surrogate_id) == 1
    assert one("SELECT attempt FROM telemetry.step_events WHERE event_id = {id:String}", id=wrong_types["id"]) == 0
    assert one("SELECT count() FROM telemetry.step_events WHERE event_id = {id:String}", id=huge_numbers["id"]) == 1
    reasons = dict(chdb.rows("SELECT event_id, reason FROM telemetry.rejected_events"))
    assert reasons[future["id"]] == reasons[ancient["id"]] == "occurred_at is before 2000 or more than a day ahead"
    assert reasons[garbage_ts["id"]] == "occurred_at is not an RFC 3339 timestamp"
    assert reasons[unknown["id"]] == "unknown kind"
    assert list(reasons.values()).count("invalid JSON or invalid UTF-8") >= 4
    assert "envelope id differs from the delivered event id" in reasons.values()
    assert len(reasons) == 10
    assert one("SELECT count() FROM system.tables WHERE database = 'telemetry' AND name = 'step_events'") == 1

    again = EnvelopeWriter(chdb).write(mixed)  # the whole batch once more, rejects included
    assert again.inserted == 0 and again.duplicates == len(mixed)
    assert one("SELECT count() FROM telemetry.rejected_events") == 10
    assert_exact(store, chdb, "workspace != 'hostile'", hostile_tools=5)
