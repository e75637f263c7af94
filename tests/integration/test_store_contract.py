"""The Store contract, run against every backend (SQLite file, PostgreSQL schema).

PostgreSQL-only tests at the end provoke the late-commit race the gap-safe outbox read exists for.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fleetforge.adapters.stores.factory import open_store
from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.envelope import Envelope, TraceContext
from fleetforge.domain.errors import ConfigError, StoreError, StoreUnavailable
from fleetforge.domain.models import BudgetRow, RunRow, RunStatus, StepRow, StepStatus, StepType
from fleetforge.domain.names import EventKind
from fleetforge.ports.store import AttemptRow, DecisionRow, OutboxPosition, OutboxRecord, Store
from tests.conftest import PG_DSN, FakeClock, MakeStore

T0 = 1_700_000_000_000_000
TRACE = TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


# -- builders ------------------------------------------------------------------------------------


def run_row(run_id: str, *, status: RunStatus = RunStatus.QUEUED, created_us: int = T0,
            workspace: str = "ws", app: str = "app") -> RunRow:
    return RunRow(id=run_id, workspace=workspace, app=app, status=status,
                  spec={"steps": [{"id": "a", "type": "llm"}], "nested": {"x": [1, 2.5, None]}},
                  seed=7, slo_tier="standard", queue_target_ms=5000, trace_id=TRACE.trace_id,
                  created_us=created_us, labels={"team": "núcleo"})


def step_row(run_id: str, step_id: str, *, status: StepStatus = StepStatus.QUEUED, due_us: int = T0,
             not_before_us: int = T0, deps: int = 0, type: StepType = StepType.LLM,
             lease_expires_us: int = 0) -> StepRow:
    return StepRow(run_id=run_id, step_id=step_id, type=type, status=status,
                   spec={"id": step_id, "inputs": {"prompt": "hi"}}, attempt=0, max_attempts=3,
                   deps_remaining=deps, due_us=due_us, ready_us=not_before_us, not_before_us=not_before_us,
                   queue_target_ms=5000, priority_boost=0, slo_tier="standard",
                   lease_owner="w1" if status is StepStatus.RUNNING else "",
                   lease_expires_us=lease_expires_us)


def event(run_id: str, n: int = 0, kind: EventKind = EventKind.STEP_QUEUED) -> Envelope:
    return Envelope(kind=kind, occurred_us=T0 + n, run_id=run_id, workspace="ws", app="app", trace=TRACE,
                    payload={"n": n, "text": "héllo"}, step_id=f"s{n}", attempt=1)


def submit(store: Store, run: RunRow, steps: list[StepRow], deps: list[tuple[str, str, str]] | None = None) -> None:
    with store.transaction() as tx:
        tx.insert_run(run)
        tx.insert_steps(steps, deps or [])


def keys(steps: list[StepRow]) -> list[tuple[str, str]]:
    return [(s.run_id, s.step_id) for s in steps]


def read_until(store: Store, after: OutboxPosition, want: int, *, timeout_s: float = 10.0) -> list[OutboxRecord]:
    """read_outbox from `after` until `want` rows came back (other sessions may briefly hold xmin)."""
    got: list[OutboxRecord] = []
    deadline = time.monotonic() + timeout_s
    while True:
        got = store.read_outbox(after, 10_000)
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


# -- schema --------------------------------------------------------------------------------------


def _latest_migration(store: Store) -> int:
    from fleetforge.adapters.stores.sqlfiles import migrations

    return migrations(f"fleetforge.adapters.stores.{store.backend}")[-1].version


def test_migrate_is_idempotent_and_reports_the_version(make_store: MakeStore) -> None:
    store = make_store()
    latest = _latest_migration(store)
    assert store.schema_version() == 0
    assert store.migrate() == latest
    assert store.migrate() == latest
    assert store.schema_version() == latest
    assert make_store().schema_version() == latest


def test_concurrent_migrators_are_safe(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def go(s: Store) -> None:
        try:
            start.wait()
            results.append(s.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == [_latest_migration(stores[0])] * 4


# -- runs and steps ------------------------------------------------------------------------------


def test_insert_and_get_runs_and_steps(store: Store) -> None:
    run = run_row("r1")
    steps = [step_row("r1", "b"), step_row("r1", "a", status=StepStatus.PENDING, deps=1),
             step_row("r1", "c", type=StepType.TOOL)]
    submit(store, run, steps, [("r1", "a", "b")])
    submit(store, run_row("r2", status=RunStatus.SUCCEEDED, created_us=T0 + 1, workspace="other"), [])

    assert store.get_run("r1") == run
    assert store.get_run("missing") is None
    assert store.get_steps("r1") == steps  # insertion order, every field round-trips
    assert store.get_steps("missing") == []
    assert [r.id for r in store.list_runs()] == ["r2", "r1"]
    assert [r.id for r in store.list_runs(status="queued")] == ["r1"]
    assert [r.id for r in store.list_runs(workspace="other")] == ["r2"]
    assert [r.id for r in store.list_runs(limit=1)] == ["r2"]
    assert store.count_open_runs() == 1

    with store.transaction() as tx:
        assert tx.get_runs(["r1", "r1", "nope", "r2"]) == {"r1": run, "r2": store.get_run("r2")}
        assert tx.get_runs([]) == {}
        assert tx.get_steps("r1") == steps
        run.status, run.started_us, run.finished_us, run.error_kind = RunStatus.FAILED, T0 + 5, T0 + 9, "timeout"
        tx.update_runs([run])
        changed = steps[0]
        changed.status, changed.attempt, changed.output = StepStatus.SUCCEEDED, 1, {"text": "ok", "n": 1.5}
        changed.lease_owner, changed.lease_expires_us, changed.finished_us = "w9", T0 + 100, T0 + 50
        changed.first_failure_us, changed.error_kind = T0 + 20, "timeout"
        tx.update_steps([changed])
    assert store.get_run("r1") == run
    assert store.get_steps("r1")[0] == changed
    assert store.count_open_runs() == 0


def test_lock_ready_steps_orders_by_due_filters_not_before_and_limits(store: Store) -> None:
    now = T0 + 1_000
    steps = [
        step_row("r1", "late", due_us=T0 + 500),
        step_row("r1", "early", due_us=T0 + 100),
        step_row("r1", "future", due_us=T0 + 1, not_before_us=now + 1),  # not yet eligible
        step_row("r1", "edge", due_us=T0 + 300, not_before_us=now),  # eligible exactly at now
        step_row("r1", "pending", status=StepStatus.PENDING, due_us=T0, deps=1),
        step_row("r1", "running", status=StepStatus.RUNNING, due_us=T0, lease_expires_us=now + 10),
    ]
    submit(store, run_row("r1"), steps)
    with store.transaction() as tx:
        assert [s.step_id for s in tx.lock_ready_steps(now, 2)] == ["early", "edge"]
    with store.transaction() as tx:
        assert [s.step_id for s in tx.lock_ready_steps(now, 100)] == ["early", "edge", "late"]
        assert [s.step_id for s in tx.lock_ready_steps(now + 1, 100)] == ["future", "early", "edge", "late"]
        assert tx.lock_ready_steps(T0 - 1, 100) == []


def test_concurrent_claimers_never_get_the_same_steps(store: Store, backend: str) -> None:
    submit(store, run_row("r1"), [step_row("r1", f"s{i:02d}", due_us=T0 + i) for i in range(10)])
    got: dict[str, list[tuple[str, str]]] = {}
    errors: list[BaseException] = []
    first_locked, second_done = threading.Event(), threading.Event()
    overlap_seen = threading.Event()

    def claim(name: str) -> None:
        try:
            if name == "second":
                first_locked.wait(10)
            with store.transaction() as tx:
                ready = tx.lock_ready_steps(T0 + 100, 4)
                got[name] = keys(ready)
                if name == "first":
                    first_locked.set()
                    # PostgreSQL: the second claimer skips our locked rows and finishes meanwhile.
                    # SQLite: its BEGIN IMMEDIATE waits for our commit, so this wait times out.
                    if second_done.wait(5 if backend == "postgres" else 0.3):
                        overlap_seen.set()
                for s in ready:
                    s.status, s.lease_owner = StepStatus.RUNNING, name
                tx.update_steps(ready)
            if name == "second":
                second_done.set()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(got["first"]) == len(got["second"]) == 4
    assert set(got["first"]).isdisjoint(got["second"])
    if backend == "postgres":
        assert overlap_seen.is_set(), "the second claimer should not wait for the first (SKIP LOCKED)"
    owners = {s.step_id: s.lease_owner for s in store.get_steps("r1")}
    assert sorted(o for o in owners.values() if o) == ["first"] * 4 + ["second"] * 4


def test_lock_steps_expired_leases_and_open_steps(store: Store) -> None:
    now = T0 + 1_000
    submit(store, run_row("r1"), [
        step_row("r1", "old", status=StepStatus.RUNNING, lease_expires_us=now - 50),
        step_row("r1", "older", status=StepStatus.RUNNING, lease_expires_us=now - 90),
        step_row("r1", "fresh", status=StepStatus.RUNNING, lease_expires_us=now + 50),
        step_row("r1", "at_now", status=StepStatus.RUNNING, lease_expires_us=now),
        step_row("r1", "done", status=StepStatus.SUCCEEDED),
        step_row("r1", "queued"),
    ])
    submit(store, run_row("r2"), [step_row("r2", "p", status=StepStatus.PENDING, deps=1),
                                  step_row("r2", "x", status=StepStatus.CANCELED)])
    submit(store, run_row("r3"), [step_row("r3", "q")])
    with store.transaction() as tx:
        assert [s.step_id for s in tx.lock_expired_leases(now, 10)] == ["older", "old"]
        assert [s.step_id for s in tx.lock_expired_leases(now, 1)] == ["older"]
        assert keys(tx.lock_steps([("r2", "p"), ("r1", "done"), ("r1", "nope"), ("r2", "p")])) == [
            ("r2", "p"), ("r1", "done")]
        assert tx.lock_steps([]) == []
        open_keys = set(keys(tx.lock_open_steps(["r1", "r2", "r1"])))
        assert open_keys == {("r1", "old"), ("r1", "older"), ("r1", "fresh"), ("r1", "at_now"),
                             ("r1", "queued"), ("r2", "p")}
        assert tx.lock_open_steps([]) == []


def test_release_dependents_returns_exactly_those_reaching_zero(store: Store) -> None:
    # a, b -> c ; a -> d ; a -> e (already canceled) ; x -> y (unrelated)
    def dag(run_id: str) -> None:
        submit(store, run_row(run_id), [
            step_row(run_id, "a"), step_row(run_id, "b"), step_row(run_id, "x"),
            step_row(run_id, "c", status=StepStatus.PENDING, deps=2),
            step_row(run_id, "d", status=StepStatus.PENDING, deps=1),
            step_row(run_id, "e", status=StepStatus.CANCELED, deps=1),
            step_row(run_id, "y", status=StepStatus.PENDING, deps=1),
        ], [(run_id, "c", "a"), (run_id, "c", "b"), (run_id, "d", "a"), (run_id, "e", "a"), (run_id, "y", "x")])

    def remaining(run_id: str) -> dict[str, int]:
        return {s.step_id: s.deps_remaining for s in store.get_steps(run_id)}

    dag("r1")
    with store.transaction() as tx:
        released = tx.release_dependents([("r1", "a")])
        assert keys(released) == [("r1", "d")]
        assert released[0].deps_remaining == 0 and released[0].status is StepStatus.PENDING
    assert remaining("r1") == {"a": 0, "b": 0, "x": 0, "c": 1, "d": 0, "e": 1, "y": 1}
    with store.transaction() as tx:
        assert keys(tx.release_dependents([("r1", "b")])) == [("r1", "c")]
        assert tx.release_dependents([]) == []

    dag("r2")  # the whole batch at once: c loses both of its edges
    with store.transaction() as tx:
        assert sorted(keys(tx.release_dependents([("r2", "a"), ("r2", "b")]))) == [("r2", "c"), ("r2", "d")]
    assert remaining("r2") == {"a": 0, "b": 0, "x": 0, "c": 0, "d": 0, "e": 1, "y": 1}
    assert remaining("r1")["y"] == 1


def test_release_in_the_scheduler_matches_release_dependents(store: Store) -> None:
    """What completion does for runs whose edges it read (core/completion.py `_release_here`), against the
    store's own `release_dependents` on an identical run: the same steps released, the same counts left."""
    from fleetforge.core.batch import Batch
    from fleetforge.core.completion import _release_here

    rng = random.Random(7)
    for trial in range(12):
        ids = [f"s{i}" for i in range(8)]
        edges = sorted({(ids[j], ids[i]) for j in range(1, 8) for i in range(j) if rng.random() < 0.35})
        done = rng.sample(ids, rng.randint(1, 4))
        statuses = {sid: rng.choice([StepStatus.PENDING, StepStatus.PENDING, StepStatus.CANCELED])
                    for sid in ids}
        results = []
        for how in ("store", "scheduler"):
            rid = f"rel{trial}-{how}"
            submit(store, run_row(rid), [
                step_row(rid, sid, status=StepStatus.RUNNING if sid in done else statuses[sid],
                         deps=sum(1 for d, _ in edges if d == sid)) for sid in ids],
                [(rid, d, on) for d, on in edges])
            with store.transaction() as tx:
                if how == "store":
                    released = tx.release_dependents([(rid, sid) for sid in done])
                else:
                    open_rows, _, _, _, deps = tx.lock_for_completion([rid], [], [], [], [rid])
                    b = Batch(run_deps=deps, locked={(r.run_id, r.step_id): r for r in open_rows})
                    released = _release_here(b, [(rid, sid) for sid in done])
                    tx.update_steps(list(b.steps.values()))
            results.append((sorted(r.step_id for r in released),
                            {r.step_id: r.deps_remaining for r in store.get_steps(rid)}))
        assert results[0] == results[1], (edges, done)


def test_lock_ready_and_lock_for_claim_read_what_their_parts_read(store: Store) -> None:
    submit(store, run_row("c1"), [step_row("c1", "a", due_us=T0 + 2), step_row("c1", "b", due_us=T0 + 1)])
    submit(store, run_row("c2"), [step_row("c2", "a", due_us=T0 + 3)])
    with store.transaction() as tx:
        tx.upsert_budgets([BudgetRow("run:c1", 10, None), BudgetRow("app:ws/app", None, None)])
    with store.transaction() as tx:
        steps, runs = tx.lock_ready(T0, 10)
        assert keys(steps) == [("c1", "b"), ("c1", "a"), ("c2", "a")]
        assert runs == {"c1": store.get_run("c1"), "c2": store.get_run("c2")}
        assert tx.lock_ready(T0 - 1, 10) == ([], {})
        budgets, again = tx.lock_for_claim(["app:ws/app", "run:c1", "run:c2"], ["app:ws/app"], list(runs.values()))
        assert budgets == {"run:c1": BudgetRow("run:c1", 10, None)}
        assert again == runs
        assert tx.lock_for_claim([], [], []) == ({}, {})


# -- budgets, ledger, decisions ------------------------------------------------------------------


def test_budgets_upsert_and_lock(store: Store) -> None:
    run_budget = BudgetRow("run:r1", 1_000, 2_500_000)
    app_budget = BudgetRow("app:ws/app", None, None, tokens_reserved=5)
    with store.transaction() as tx:
        assert tx.lock_budgets(["run:r1"]) == {}
        tx.upsert_budgets([run_budget, app_budget])
    with store.transaction() as tx:
        assert tx.lock_budgets([]) == {}
        assert tx.lock_budgets(["app:ws/app", "run:r1", "run:none", "run:r1"]) == {
            "run:r1": run_budget, "app:ws/app": app_budget}
        run_budget.tokens_reserved, run_budget.cost_reserved_micros = 300, 9_000_000_000_000
        run_budget.tokens_used, run_budget.cost_used_micros, run_budget.tokens_limit = 200, 1, None
        tx.upsert_budgets([run_budget])
    with store.transaction() as tx:
        assert tx.lock_budgets(["run:r1"]) == {"run:r1": run_budget}


def test_attempts_and_decisions(store: Store) -> None:
    submit(store, run_row("r1"), [step_row("r1", "a"), step_row("r1", "b", type=StepType.TOOL)])
    first = AttemptRow("r1", "a", 1, "running", "w1", T0 + 10, tokens_reserved=100, cost_reserved_micros=5_000)
    second = AttemptRow("r1", "b", 1, "running", "w2", T0 + 5)
    decision = DecisionRow("d1", "r1", "a", 1, "human_approval", "pre", "allow", "ok", T0 + 11, wait_us=1_234_567)
    with store.transaction() as tx:
        tx.insert_attempts([first, second])
        tx.insert_decisions([decision, DecisionRow("d0", "r1", "a", 1, "acl", "pre", "allow", "", T0 + 11)])
    assert store.get_attempts("r1") == [second, first]  # by started_us
    assert store.get_attempts("other") == []
    first.status, first.finished_us, first.tokens_used, first.cost_used_micros = "succeeded", T0 + 99, 80, 4_000
    first.input_tokens, first.output_tokens, first.cached_tokens = 60, 20, 10
    first.provider, first.model, first.tool = "openai", "gpt-4o-mini", ""
    second.status, second.finished_us, second.error_kind, second.tool = "failed", T0 + 7, "http_5xx", "search"
    with store.transaction() as tx:
        tx.finish_attempts([first, second])
    assert store.get_attempts("r1") == [second, first]
    assert [d.id for d in store.get_decisions("r1")] == ["d0", "d1"]
    assert store.get_decisions("r1")[1] == decision


# -- outbox --------------------------------------------------------------------------------------


def test_outbox_order_cursors_and_backlog(store: Store, clock: FakeClock) -> None:
    first = [event("r1", i) for i in range(3)]
    second = [event("r2", i) for i in range(3, 5)]
    with store.transaction() as tx:
        tx.append_events(first)
    clock.advance(1_000)
    with store.transaction() as tx:
        tx.append_events(second)
        tx.append_events([])

    everything = read_until(store, (0, 0), 5)
    assert [r.event_id for r in everything] == [e.id for e in first + second]
    assert [r.envelope for r in everything] == [e.to_json() for e in first + second]  # unchanged
    assert [(r.kind, r.run_id) for r in everything] == [(str(e.kind), e.run_id) for e in first + second]
    assert [r.created_us for r in everything] == [T0] * 3 + [T0 + 1_000] * 2
    positions = [r.position for r in everything]
    assert positions == sorted(positions) and len(set(positions)) == 5
    assert Envelope.from_json(everything[0].envelope) == first[0]

    assert store.read_outbox((0, 0), 2) == everything[:2]
    assert store.read_outbox(positions[1], 10) == everything[2:]
    assert store.read_outbox(positions[-1], 10) == []
    assert list(store.iter_outbox(batch=2)) == everything

    assert store.get_cursor("exporter") == (0, 0)
    assert store.outbox_backlog("exporter") == (5, T0)
    store.set_cursor("exporter", positions[2])
    assert store.get_cursor("exporter") == positions[2]
    assert store.outbox_backlog("exporter") == (2, T0 + 1_000)
    store.set_cursor("exporter", positions[4])
    assert store.outbox_backlog("exporter") == (0, None)
    assert store.get_cursor("other") == (0, 0)


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.insert_run(run_row("r1"))
        tx.insert_steps([step_row("r1", "a")], [])
        tx.upsert_budgets([BudgetRow("run:r1", 10, None)])
        tx.append_events([event("r1")])
        raise RuntimeError("boom")
    assert store.get_run("r1") is None
    assert store.get_steps("r1") == []
    assert store.read_outbox((0, 0), 10) == []
    with store.transaction() as tx:
        assert tx.lock_budgets(["run:r1"]) == {}
    submit(store, run_row("r1"), [step_row("r1", "a")])  # the store is still usable
    assert store.get_run("r1") is not None


def test_driver_errors_become_store_errors_and_roll_back(store: Store) -> None:
    submit(store, run_row("r1"), [])
    with pytest.raises(StoreError), store.transaction() as tx:
        tx.append_events([event("r1")])
        tx.insert_run(run_row("r1"))  # duplicate primary key
    assert store.read_outbox((0, 0), 10) == []
    submit(store, run_row("r2"), [])
    assert store.count_open_runs() == 2


def test_aggregates_have_the_same_shapes(store: Store) -> None:
    submit(store, run_row("r1"), [step_row("r1", "a"), step_row("r1", "t", type=StepType.TOOL)])
    submit(store, run_row("r2", status=RunStatus.SUCCEEDED, app="other"), [step_row("r2", "h", type=StepType.HTTP)])
    attempts = [
        AttemptRow("r1", "a", 1, "failed", "w", T0, tokens_reserved=10, tokens_used=8,
                   cost_reserved_micros=3_000_000_000_000, cost_used_micros=2_000_000_000_000),
        AttemptRow("r1", "a", 2, "succeeded", "w", T0 + 1, tokens_reserved=10, tokens_used=9,
                   cost_reserved_micros=3_000_000_000_000, cost_used_micros=1),
        AttemptRow("r1", "t", 1, "denied", "w", T0 + 2, tokens_reserved=99),
        AttemptRow("r2", "h", 1, "failed", "w", T0 + 3, error_kind="http_5xx", tool="GET", provider="api"),
    ]
    with store.transaction() as tx:
        tx.insert_attempts(attempts)
        tx.insert_decisions([DecisionRow(f"d{i}", "r1", "a", 1, "pii", "pre", eff, "", T0)
                             for i, eff in enumerate(["allow", "allow", "deny"])])

    def agg(name: str) -> list[tuple[Any, ...]]:
        found = store.aggregate(name)
        assert all(isinstance(row, tuple) for row in found)
        for row in found:
            assert all(type(v) in (str, int) or v is None for v in row), (name, row)
        return sorted(found)

    assert agg("summary_runs") == [("queued", 1), ("succeeded", 1)]
    assert agg("summary_steps") == [("queued", 3)]
    assert agg("summary_attempts") == [("http", "failed", 1, 1), ("llm", "failed", 1, 1),
                                       ("llm", "succeeded", 2, 1), ("tool", "denied", 1, 1)]
    assert agg("summary_decisions") == [("pii", "pre", "allow", 2), ("pii", "pre", "deny", 1)]
    assert agg("summary_budget") == [("ws", "app", 20, 17, 6_000_000_000_000, 2_000_000_000_001),
                                     ("ws", "other", 0, 0, 0, 0)]
    assert agg("summary_tools") == [("GET", "api", "http_5xx", 1)]


def test_the_agent_aggregate_tells_agents_turns_and_calls_apart(store: Store) -> None:
    turn = {"parent": "ag", "unit": "turn", "inputs": {"model": "m"}}
    call = {"parent": "ag", "unit": "call", "inputs": {"tool": "weather", "args": {}}, "call_id": "c1"}
    submit(store, run_row("r1"), [
        step_row("r1", "ag", type=StepType.AGENT, status=StepStatus.PENDING), step_row("r1", "plain"),
        replace(step_row("r1", "ag.t1", status=StepStatus.SUCCEEDED), spec=turn),
        replace(step_row("r1", "ag.t2"), spec=turn),
        replace(step_row("r1", "ag.t1.cc1", type=StepType.TOOL, status=StepStatus.DENIED), spec=call),
        replace(step_row("r1", "ag.t1.cc2", type=StepType.TOOL, status=StepStatus.SUCCEEDED), spec=call),
    ])
    assert sorted(store.aggregate("summary_agents")) == [
        ("agent", "pending", "", 1), ("call", "denied", "weather", 1), ("call", "succeeded", "weather", 1),
        ("turn", "queued", "", 1), ("turn", "succeeded", "", 1)]


# -- PostgreSQL only: the late-commit race -----------------------------------------------------


def naive_read(store: PostgresStore, after_seq: int) -> list[tuple[int, str]]:
    """What a reader ordering by seq alone would see: (seq, event_id) with seq > after_seq."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        query = sql.SQL("SELECT seq, event_id FROM {}.outbox WHERE seq > %s ORDER BY seq").format(
            sql.Identifier(store.schema))
        return [(int(seq), str(eid)) for seq, eid in conn.execute(query, (after_seq,))]


def late_commit(store: PostgresStore, while_open: Callable[[], None]) -> tuple[Envelope, Envelope]:
    """A appends and stays open; B appends and commits; `while_open()` runs; then A commits."""
    a, b = event("rA", 1), event("rB", 2)
    with ExitStack() as stack:
        tx_a = stack.enter_context(store.transaction())
        tx_a.append_events([a])  # A takes its xid and the smaller seq first (writes go out with the next read)
        tx_a.get_steps("rA")
        with store.transaction() as tx_b:
            tx_b.append_events([b])
        while_open()
    return a, b


@pytest.mark.postgres
def test_gap_safe_reader_never_skips_a_late_commit(pg_store: PostgresStore) -> None:
    seen: list[OutboxRecord] = []
    cursor: OutboxPosition = (0, 0)

    def read_once() -> None:
        nonlocal cursor
        got = pg_store.read_outbox(cursor, 100)
        seen.extend(got)
        if got:
            cursor = got[-1].position
            pg_store.set_cursor("reader", cursor)

    def while_open() -> None:
        read_once()
        # B is committed but A, older, is still open: nothing past A may be handed out.
        assert seen == [], "read B's row while an older transaction could still commit before it"
        assert pg_store.get_cursor("reader") == (0, 0)

    a, b = late_commit(pg_store, while_open)
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        read_once()
        time.sleep(0.02)
    assert [r.event_id for r in seen] == [a.id, b.id]  # everything committed, once, in (xid, seq) order
    assert seen[0].position < seen[1].position
    assert pg_store.get_cursor("reader") == seen[1].position
    assert pg_store.read_outbox(cursor, 100) == []
    assert pg_store.outbox_backlog("reader") == (0, None)


@pytest.mark.postgres
def test_a_naive_seq_reader_would_skip_the_late_commit(pg_store: PostgresStore) -> None:
    naive_seen: list[tuple[int, str]] = []

    def while_open() -> None:
        naive_seen.extend(naive_read(pg_store, 0))

    a, b = late_commit(pg_store, while_open)
    naive_seen.extend(naive_read(pg_store, naive_seen[-1][0] if naive_seen else 0))
    assert [eid for _, eid in naive_seen] == [b.id]  # A's row committed behind the cursor: lost
    assert sorted(seq for seq, _ in naive_read(pg_store, 0))[0] < naive_seen[-1][0]
    assert [r.event_id for r in read_until(pg_store, (0, 0), 2)] == [a.id, b.id]


@pytest.mark.postgres
def test_concurrent_writers_and_a_reader_lose_and_repeat_nothing(pg_store: PostgresStore) -> None:
    writers, per_writer = 4, 15
    committed: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []
    read: list[OutboxRecord] = []

    def write(w: int) -> None:
        rnd = random.Random(w)
        try:
            for i in range(per_writer):
                pair = [event(f"w{w}", i), event(f"w{w}", i)]
                with pg_store.transaction() as tx:
                    tx.append_events(pair[:1])
                    time.sleep(rnd.random() * 0.01)  # hold the transaction open a little
                    tx.append_events(pair[1:])
                with lock:
                    committed.extend(e.id for e in pair)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        cursor: OutboxPosition = (0, 0)
        try:
            while not done.is_set() or len(read) < writers * per_writer * 2:
                got = pg_store.read_outbox(cursor, 7)
                read.extend(got)
                if got:
                    cursor = got[-1].position
                else:
                    time.sleep(0.002)
                if done.is_set() and time.monotonic() > deadline:
                    return
        except BaseException as exc:
            errors.append(exc)

    deadline = float("inf")
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + 10
    done.set()
    r.join(30)
    assert errors == []
    ids = [rec.event_id for rec in read]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert set(ids) == set(committed), "an event was skipped"
    positions = [rec.position for rec in read]
    assert positions == sorted(positions)
    # each transaction's two rows are adjacent in delivery order
    by_xid: dict[int, list[int]] = {}
    for i, rec in enumerate(read):
        by_xid.setdefault(rec.position[0], []).append(i)
    assert all(len(ix) == 2 and ix[1] == ix[0] + 1 for ix in by_xid.values())


# -- PostgreSQL errors and the store factory ---------------------------------------------------


@pytest.mark.postgres
def test_unreachable_postgres_is_store_unavailable_without_the_password() -> None:
    store = PostgresStore("postgresql://fleet:s3cr3t-pw@127.0.0.1:1/test", schema="x", connect_timeout_s=2)
    with pytest.raises(StoreUnavailable) as info:
        store.migrate()
    assert "s3cr3t-pw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    store.close()


def test_postgres_query_errors_are_store_errors(pg_store: PostgresStore) -> None:
    with pytest.raises(StoreError) as info:
        pg_store.aggregate("insert_run")  # wrong parameters for the statement
    assert not isinstance(info.value, StoreUnavailable)


def test_open_store_accepts_sqlite_and_postgres_urls(tmp_path: Any) -> None:
    absolute = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(absolute, SqliteStore) and absolute.path == tmp_path / "a.db"
    assert isinstance(open_store(str(tmp_path / "b.db")), SqliteStore)
    relative = open_store("sqlite:///data/c.db")
    assert isinstance(relative, SqliteStore) and str(relative.path) == "data/c.db"
    for url in ("postgresql://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1/test"):
        pg = open_store(url)
        assert isinstance(pg, PostgresStore) and pg.backend == "postgres"
        pg.close()


@pytest.mark.parametrize("url", ["mysql://u:hidden-pw@h/db", "sqlite://", "sqlite:///:memory:", ""])
def test_open_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    message = str(info.value)
    assert "sqlite:///" in message and "postgresql://" in message
    assert "hidden-pw" not in message
    if url:
        assert url.split("://")[0] in message


def test_ensure_budgets_inserts_only_missing_rows(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_budgets([BudgetRow("fleet", None, None, tokens_reserved=7)])
        tx.ensure_budgets([BudgetRow("fleet", 10, 10), BudgetRow("app:ws/a", 5, None)])
    with store.transaction() as tx:
        assert tx.lock_budgets(["fleet", "app:ws/a"]) == {
            "fleet": BudgetRow("fleet", None, None, tokens_reserved=7),
            "app:ws/a": BudgetRow("app:ws/a", 5, None),
        }


def test_lock_budgets_if_limited_takes_shared_rows_only_when_they_carry_a_limit(store: Store) -> None:
    app = BudgetRow("app:ws/app", None, None, tokens_reserved=5)
    capped = BudgetRow("app:ws/capped", None, 7_000)
    run = BudgetRow("run:r1", None, None, tokens_used=3)
    with store.transaction() as tx:
        tx.upsert_budgets([app, capped, run, BudgetRow("fleet", None, None)])
        scopes = ["app:ws/app", "app:ws/capped", "fleet", "run:r1", "run:none"]
        assert tx.lock_budgets(scopes, if_limited=["app:ws/app", "app:ws/capped", "fleet", "run:none"]) == {
            "app:ws/capped": capped, "run:r1": run}
        assert tx.lock_budgets(scopes, if_limited=[]) == {
            "app:ws/app": app, "app:ws/capped": capped, "fleet": BudgetRow("fleet", None, None), "run:r1": run}


@pytest.mark.postgres
def test_lock_budgets_if_limited_does_not_wait_for_a_shared_row_without_limit(pg_store: PostgresStore) -> None:
    with pg_store.transaction() as tx:
        tx.upsert_budgets([BudgetRow("fleet", None, None), BudgetRow("run:r1", 10, None)])
    with pg_store.transaction() as holder:
        row = holder.lock_budgets(["fleet"])["fleet"]
        row.tokens_reserved = 9
        holder.upsert_budgets([row])
        started = time.monotonic()
        with pg_store.transaction() as other:  # lock_budgets(["fleet", ...]) would wait for `holder` forever
            assert other.lock_budgets(["fleet", "run:r1"], if_limited=["fleet"]) == {
                "run:r1": BudgetRow("run:r1", 10, None)}
        assert time.monotonic() - started < 5
    with pg_store.transaction() as tx:
        assert tx.lock_budgets(["fleet"])["fleet"].tokens_reserved == 9


def test_batch_writes_keep_the_order_given_and_the_last_of_a_key(store: Store) -> None:
    steps = [step_row("r1", f"s{i:03d}") for i in range(120)][::-1]
    submit(store, run_row("r1"), steps)
    assert [s.step_id for s in store.get_steps("r1")] == [s.step_id for s in steps]  # insertion order
    run = run_row("r1")
    first, last = step_row("r1", "s007"), step_row("r1", "s007")
    first.attempt, last.attempt, last.output = 1, 2, {"n": 2}
    with store.transaction() as tx:
        tx.update_steps([first, last])
        early, late = run_row("r1"), run_row("r1")
        early.status, late.status, late.error_kind = RunStatus.RUNNING, RunStatus.FAILED, "crash"
        tx.update_runs([early, late])
        tx.append_events([event("r1", n) for n in range(300)])
    got = next(s for s in store.get_steps("r1") if s.step_id == "s007")
    assert (got.attempt, got.output) == (2, {"n": 2})
    stored = store.get_run("r1")
    assert stored is not None and (stored.status, stored.error_kind) == (RunStatus.FAILED, "crash")
    assert run.id == stored.id
    assert [json_n(r.envelope) for r in read_until(store, (0, 0), 300)] == list(range(300))


def json_n(envelope: str) -> int:
    return int(Envelope.from_json(envelope).payload["n"])


def test_reread_runs_reads_the_state_again_and_keeps_the_rest(store: Store) -> None:
    submit(store, run_row("r1"), [])
    submit(store, run_row("r2", created_us=T0 + 1), [])
    stale = {r.id: r for r in [run_row("r1"), run_row("r2", created_us=T0 + 1), run_row("gone")]}
    with store.transaction() as tx:
        assert tx.reread_runs([]) == {}
        changed = run_row("r1")
        changed.status, changed.started_us, changed.finished_us, changed.error_kind = (
            RunStatus.FAILED, T0 + 5, T0 + 9, "timeout")
        tx.update_runs([changed])
        fresh = tx.reread_runs([stale["r1"], stale["gone"], stale["r2"], stale["r1"]])
        assert fresh == tx.get_runs(["r1", "r2"]) == {"r1": changed, "r2": stale["r2"]}
        assert fresh["r1"] is not stale["r1"] and stale["r1"].status is RunStatus.QUEUED


def test_claim_idempotency_key_binds_a_key_to_its_first_run(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.claim_idempotency_key("k1", "r1", T0) == "r1"
        assert tx.claim_idempotency_key("k1", "r2", T0) == "r1"  # the same transaction sees its own key
    with store.transaction() as tx:
        assert tx.claim_idempotency_key("k1", "r3", T0 + 1) == "r1"
        assert tx.claim_idempotency_key("k2", "r3", T0 + 1) == "r3"
    try:
        with store.transaction() as tx:
            assert tx.claim_idempotency_key("k3", "r4", T0) == "r4"
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    with store.transaction() as tx:  # a rolled-back claim leaves the key free
        assert tx.claim_idempotency_key("k3", "r5", T0) == "r5"


def test_run_outputs_and_resolved_step_inputs_round_trip(store: Store) -> None:
    """runs.outputs (migration 0006) is written by update_runs and kept when a later update has none;
    a step's spec (its resolved inputs) is written by update_steps."""
    run = run_row("r-out")
    submit(store, run, [step_row("r-out", "a")])
    assert store.get_run("r-out").outputs is None  # type: ignore[union-attr]
    run.status, run.outputs = RunStatus.SUCCEEDED, {"answer": "é", "n": [1, {"k": None}]}
    with store.transaction() as tx:
        tx.update_runs([run])
    run.outputs = None
    with store.transaction() as tx:
        tx.update_runs([run])
        step = tx.lock_steps([("r-out", "a")])[0]
        step.spec = {"inputs": {"prompt": "resolved", "k": 3}}
        tx.update_steps([step])
    got = store.get_run("r-out")
    assert got is not None and got.outputs == {"answer": "é", "n": [1, {"k": None}]}
    assert store.list_runs()[0].outputs == got.outputs
    with store.transaction() as tx:
        assert tx.get_runs(["r-out"])["r-out"].outputs == got.outputs
    assert store.get_steps("r-out")[0].spec == {"inputs": {"prompt": "resolved", "k": 3}}

def test_find_run_ids_matches_prefixes_exactly_in_id_order(store: Store) -> None:
    ids = ["ab-1", "ab-2", "ab_3", "abc", "ab%", "a", "b", "ab\U0010ffff", "abé", "ac"]
    with store.transaction() as tx:
        for i, rid in enumerate(ids):
            tx.insert_run(run_row(rid, created_us=T0 + i))
    assert store.find_run_ids("ab-", 10) == ["ab-1", "ab-2"]
    assert store.find_run_ids("ab_", 10) == ["ab_3"]  # '_' and '%' are no wildcards
    assert store.find_run_ids("ab%", 10) == ["ab%"]
    assert store.find_run_ids("ab", 10) == sorted(i for i in ids if i.startswith("ab"))
    assert store.find_run_ids("ab", 2) == ["ab%", "ab-1"]
    assert store.find_run_ids("ab\U0010ffff", 10) == ["ab\U0010ffff"]
    assert store.find_run_ids("abé", 10) == ["abé"]
    assert store.find_run_ids("a", 100) == sorted(i for i in ids if i.startswith("a"))
    assert store.find_run_ids("zz", 10) == [] and store.find_run_ids("ab-3", 10) == []


def _statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the store sends from now on (their start), recorded at psycopg's cursors."""
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def spy(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        text = query.as_string(self.connection) if isinstance(query, sql.Composable) else str(query)
        sent.append(" ".join(line for line in text.split("\n") if not line.lstrip().startswith("--"))[:40])
        return real(self, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    return sent


def test_postgres_writes_travel_as_one_statement(pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _statements(monkeypatch)
    with pg_store.transaction() as tx:  # inserts only: one statement, its own transaction
        tx.insert_run(run_row("r1"))
        tx.insert_steps([step_row("r1", "a"), step_row("r1", "b")], [])
        tx.append_events([event("r1", 1), event("r1", 2)])
        tx.notify_ready()
    assert len(sent) == 1 and sent[0].startswith("WITH w0 AS ( INSERT INTO runs"), sent
    sent.clear()
    with pg_store.transaction() as tx:  # a read first: BEGIN, the read, then one write and COMMIT
        (a, b) = tx.lock_steps([("r1", "a"), ("r1", "b")])
        a.status = b.status = StepStatus.RUNNING
        tx.update_steps([a, b])
        tx.append_events([event("r1", 3)])
    assert [s.split()[0] for s in sent] == ["BEGIN", "SET", "SELECT", "WITH", "COMMIT"], sent
    sent.clear()
    with pg_store.transaction() as tx:  # an update left unread keeps its transaction (and planner setting)
        tx.update_runs([replace(run_row("r1"), status=RunStatus.RUNNING, started_us=T0)])
    assert [s.split()[0] for s in sent] == ["BEGIN", "SET", "WITH", "COMMIT"], sent
    assert [s.status for s in pg_store.get_steps("r1")] == [StepStatus.RUNNING] * 2
    assert pg_store.get_run("r1").status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert len(read_until(pg_store, (0, 0), 3)) == 3


def test_postgres_one_statement_is_all_or_nothing(pg_store: PostgresStore) -> None:
    with pytest.raises(StoreError), pg_store.transaction() as tx:
        tx.insert_run(run_row("r9"))
        tx.insert_steps([step_row("r9", "a"), step_row("r9", "a")], [])  # its second row breaks the key
        tx.append_events([event("r9")])
    assert pg_store.get_run("r9") is None and pg_store.read_outbox((0, 0), 10) == []
