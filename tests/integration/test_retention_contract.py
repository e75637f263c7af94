"""Retention against every backend (SQLite file, PostgreSQL schema): the outbox is pruned only behind
the slowest reader and past the window, finished runs age out with every row they own, active runs
never do, a lagging reader blocks and is reported, and one process at a time holds the lease.
"""

from __future__ import annotations

import threading
import time
from typing import cast

import psycopg
import pytest
from psycopg import sql

from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.core.budgets import app_scope, run_scope
from fleetforge.core.retention import LEASE_NAME, Retention, RetentionSettings
from fleetforge.domain.models import BudgetRow, RunStatus, StepStatus
from fleetforge.ports.retention import RetentionStore
from fleetforge.ports.store import AttemptRow, DecisionRow, OutboxPosition, Store
from tests.conftest import PG_DSN, FakeClock, MakeStore
from tests.integration.test_store_contract import T0, event, read_until, run_row, step_row

HOUR_US = 3_600_000_000
SETTINGS = RetentionSettings(outbox_window_s=3600.0, run_window_s=86400.0, reader_lag_limit_s=600.0, batch=3)


def rs(store: Store) -> RetentionStore:
    retention: RetentionStore = cast(RetentionStore, store)
    return retention


def retention(store: Store, clock: FakeClock, holder: str = "r1", settings: RetentionSettings = SETTINGS) -> Retention:
    return Retention(rs(store), settings, holder=holder, clock=clock)


def pruned(store: Store, clock: FakeClock, want: int, timeout_s: float = 10.0) -> int:
    """Outbox rows pruned by passes until `want` were (on PostgreSQL a transaction of another session may
    briefly hold the snapshot's xmin back, as for read_until)."""
    total, deadline = 0, time.monotonic() + timeout_s
    while True:
        total += retention(store, clock).run_once().outbox_pruned
        if total >= want or time.monotonic() > deadline:
            return total
        time.sleep(0.05)


def append(store: Store, run_id: str, n: int, start: int = 0) -> list[str]:
    events = [event(run_id, start + i) for i in range(n)]
    with store.transaction() as tx:
        tx.append_events(events)
    return [e.id for e in events]


def positions(store: Store) -> list[OutboxPosition]:
    return [r.position for r in read_until(store, (0, 0), 0)]


def ids(store: Store) -> list[str]:
    return [r.event_id for r in store.iter_outbox()]


# -- outbox --------------------------------------------------------------------------------------


def test_outbox_is_pruned_only_behind_the_slowest_reader(store: Store, clock: FakeClock) -> None:
    written = append(store, "r1", 10)
    pos = positions(store)
    assert len(pos) == 10
    store.set_cursor("fast", pos[7])
    store.set_cursor("slow", pos[3])
    clock.advance(2 * HOUR_US)

    report = retention(store, clock).run_once()
    assert report.held_lease and report.complete
    assert report.outbox_bound == pos[3]
    assert report.outbox_pruned == 4
    assert ids(store) == written[4:]  # rows at or before the slowest cursor only
    # both readers continue exactly where they were
    assert [r.event_id for r in store.read_outbox(pos[3], 100)] == written[4:]
    assert [r.event_id for r in store.read_outbox(pos[7], 100)] == written[8:]

    store.set_cursor("slow", pos[9])
    assert pruned(store, clock, 4) == 4
    assert ids(store) == written[8:]


def test_outbox_rows_inside_the_window_are_kept(store: Store, clock: FakeClock) -> None:
    old = append(store, "r1", 5)
    clock.advance(50 * 60_000_000)  # +50 min
    young = append(store, "r2", 5, start=5)
    store.set_cursor("sink", positions(store)[-1])
    clock.advance(20 * 60_000_000)  # now: old rows 70 min, young ones 20 min

    dry = retention(store, clock).run_once(dry_run=True)
    assert (dry.dry_run, dry.outbox_pruned) == (True, 5)
    assert ids(store) == old + young  # a dry run deletes nothing
    assert pruned(store, clock, 5) == 5
    assert ids(store) == young
    clock.advance(HOUR_US)
    assert pruned(store, clock, 5) == 5
    assert ids(store) == []


def test_without_readers_the_age_alone_decides_and_off_keeps_everything(store: Store, clock: FakeClock) -> None:
    append(store, "r1", 4)
    clock.advance(2 * HOUR_US)
    keep = RetentionSettings(outbox_window_s=None, run_window_s=None)
    assert retention(store, clock, settings=keep).run_once().outbox_pruned == 0
    assert len(ids(store)) == 4
    assert pruned(store, clock, 4) == 4


def test_a_lagging_reader_blocks_pruning_and_is_reported(store: Store, clock: FakeClock) -> None:
    append(store, "r1", 6)
    pos = positions(store)
    store.set_cursor("clickhouse-sink", pos[-1])
    store.set_cursor("exporter-phoenix", pos[1])
    store.set_cursor("exporter-phoenix.delivered", pos[4])
    clock.advance(2 * HOUR_US)

    report = retention(store, clock).run_once()
    assert report.outbox_pruned == 2
    by_name = {r.name: r for r in report.readers}
    assert set(by_name) == {"clickhouse-sink", "exporter-phoenix"}  # the companion cursor is folded in
    assert by_name["exporter-phoenix"].lagging and by_name["exporter-phoenix"].lag_s == pytest.approx(7200)
    assert not by_name["clickhouse-sink"].lagging and by_name["clickhouse-sink"].lag_s == 0
    assert [r.name for r in report.lagging] == ["exporter-phoenix"]
    assert len(ids(store)) == 4  # what it has not read stays

    from fleetforge.adapters.checks import retention_checks

    checks = retention_checks(store, lag_limit_s=600.0, now_us=clock.now)
    lagging = [c for c in checks if c.verdict == "WARN"]
    assert len(lagging) == 1 and "exporter-phoenix" in lagging[0].name
    assert "--forget-reader exporter-phoenix" in lagging[0].fix

    # the operator forgets it: the rest goes
    assert rs(store).forget_cursor("exporter-phoenix") and rs(store).forget_cursor("exporter-phoenix.delivered")
    assert not rs(store).forget_cursor("exporter-phoenix")
    assert pruned(store, clock, 4) == 4
    assert all(c.verdict == "OK" for c in retention_checks(store, lag_limit_s=600.0, now_us=clock.now))


def test_a_stopped_reader_that_comes_back_loses_nothing(store: Store, clock: FakeClock) -> None:
    written: list[str] = []
    seen: list[str] = []
    fast_pos: OutboxPosition = (0, 0)
    slow_pos: OutboxPosition = (0, 0)

    def read(name: str, after: OutboxPosition) -> OutboxPosition:
        got = store.read_outbox(after, 1000)
        if name == "slow":
            seen.extend(r.event_id for r in got)
        if got:
            store.set_cursor(name, got[-1].position)
            return got[-1].position
        return after

    written += append(store, "r0", 5)
    slow_pos = read("slow", slow_pos)
    fast_pos = read("fast", fast_pos)
    # the slow reader stops; events keep coming, the fast reader keeps up, retention runs every 10 min
    for i in range(1, 13):
        written += append(store, f"r{i}", 5, start=5 * i)
        fast_pos = read("fast", fast_pos)
        clock.advance(10 * 60_000_000)
        retention(store, clock).run_once()
    assert len(ids(store)) == 60  # nothing the slow reader has not read was pruned
    deadline = time.monotonic() + 10  # PostgreSQL: another session may briefly hold the snapshot's xmin back
    while len(seen) < len(written) and time.monotonic() < deadline:
        slow_pos = read("slow", slow_pos)
    assert seen == written  # every event, once, in order
    clock.advance(2 * HOUR_US)
    assert pruned(store, clock, 60) == 60


# -- runs ----------------------------------------------------------------------------------------


def _run_with_rows(store: Store, run_id: str, status: RunStatus, finished_us: int | None,
                   step_status: StepStatus = StepStatus.SUCCEEDED) -> None:
    run = run_row(run_id, status=status, created_us=T0)
    run.finished_us = finished_us
    with store.transaction() as tx:
        tx.insert_run(run)
        tx.insert_steps([step_row(run_id, "a", status=StepStatus.SUCCEEDED),
                         step_row(run_id, "b", status=step_status)], [(run_id, "b", "a")])
        tx.insert_attempts([AttemptRow(run_id, "a", 1, "succeeded", "w1", T0, T0 + 1)])
        tx.insert_decisions([DecisionRow(f"{run_id}-d", run_id, "a", 1, "pii", "pre", "allow", "", T0)])
        tx.upsert_budgets([BudgetRow(run_scope(run_id), 100, None)])


def test_finished_runs_age_out_with_their_rows_and_active_runs_never(store: Store, clock: FakeClock) -> None:
    day = 24 * HOUR_US
    _run_with_rows(store, "old-ok", RunStatus.SUCCEEDED, T0)
    _run_with_rows(store, "old-failed", RunStatus.FAILED, T0 + 1)
    _run_with_rows(store, "old-canceled", RunStatus.CANCELED, T0 + 2)
    _run_with_rows(store, "canceled-still-running", RunStatus.CANCELED, T0, step_status=StepStatus.RUNNING)
    _run_with_rows(store, "queued", RunStatus.QUEUED, None, step_status=StepStatus.QUEUED)
    _run_with_rows(store, "running", RunStatus.RUNNING, None, step_status=StepStatus.RUNNING)
    _run_with_rows(store, "recent", RunStatus.SUCCEEDED, T0 + day + HOUR_US)
    with store.transaction() as tx:
        tx.upsert_budgets([BudgetRow(app_scope("ws", "app"), 1000, None)])
    clock.now = T0 + day + 2 * HOUR_US  # the old ones finished 26 h ago, "recent" 1 h ago

    assert retention(store, clock).run_once(dry_run=True).runs_pruned == 3
    report = retention(store, clock).run_once()
    assert report.runs_pruned == 3
    for gone in ("old-ok", "old-failed", "old-canceled"):
        assert store.get_run(gone) is None
        assert store.get_steps(gone) == [] and store.get_attempts(gone) == [] and store.get_decisions(gone) == []
    for kept in ("canceled-still-running", "queued", "running", "recent"):
        assert store.get_run(kept) is not None and len(store.get_steps(kept)) == 2
        assert len(store.get_attempts(kept)) == 1 and len(store.get_decisions(kept)) == 1
    with store.transaction() as tx:
        budgets = tx.lock_budgets([run_scope("old-ok"), run_scope("recent"), app_scope("ws", "app")])
        # the dependency edges went with the steps: a new run reusing nothing finds none
        tx.insert_steps([step_row("old-ok", "b")], [("old-ok", "b", "a")])
    assert set(budgets) == {run_scope("recent"), app_scope("ws", "app")}
    assert retention(store, clock, settings=RetentionSettings(run_window_s=None)).run_once().runs_pruned == 0


def test_runs_stay_while_a_reader_has_not_read_events_older_than_they_are(store: Store, clock: FakeClock) -> None:
    append(store, "x", 2)  # at T0, unread by the sink
    store.set_cursor("sink", (0, 0))
    _run_with_rows(store, "done", RunStatus.SUCCEEDED, T0 + 10)
    clock.now = T0 + 48 * HOUR_US
    assert retention(store, clock).run_once().runs_pruned == 0
    store.set_cursor("sink", positions(store)[-1])
    assert retention(store, clock).run_once().runs_pruned == 1


# -- the lease -----------------------------------------------------------------------------------


def test_two_retention_processes_never_both_hold_the_lease(make_store: MakeStore, clock: FakeClock) -> None:
    stores = [make_store(), make_store()]
    stores[0].migrate()
    append(stores[0], "r", 50)
    clock.advance(2 * HOUR_US)
    workers = [retention(s, clock, holder=f"p{i}") for i, s in enumerate(stores)]
    held: list[list[bool]] = [[], []]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            start.wait()
            for _ in range(15):
                held[i].append(workers[i].run_once().held_lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted([any(h) for h in held]) == [False, True]  # one holder throughout; the other never
    assert all(held[0]) or all(held[1])
    assert ids(stores[0]) == []
    # the holder lets go on shutdown: the other takes over at once
    holder = 0 if all(held[0]) else 1
    workers[holder].release()
    assert workers[1 - holder].run_once().held_lease
    assert rs(stores[0]).try_lease(LEASE_NAME, "someone-else", 30_000) is None


# -- PostgreSQL: never in the way of the scheduler -----------------------------------------------


def _session(store: PostgresStore) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(PG_DSN)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema)))
    return conn


@pytest.mark.postgres
def test_postgres_run_pruning_skips_rows_another_transaction_holds(pg_store: PostgresStore, clock: FakeClock) -> None:
    _run_with_rows(pg_store, "held", RunStatus.SUCCEEDED, T0)
    _run_with_rows(pg_store, "free", RunStatus.SUCCEEDED, T0)
    clock.now = T0 + 48 * HOUR_US
    other = _session(pg_store)
    try:
        other.execute("SELECT 1 FROM runs WHERE id = 'held' FOR UPDATE")
        started = time.monotonic()
        assert retention(pg_store, clock).run_once().runs_pruned == 1  # no wait on the locked row
        assert time.monotonic() - started < 5
    finally:
        other.rollback()
        other.close()
    assert pg_store.get_run("free") is None and pg_store.get_run("held") is not None
    assert retention(pg_store, clock).run_once().runs_pruned == 1


@pytest.mark.postgres
def test_postgres_pruning_never_passes_a_transaction_in_progress(pg_store: PostgresStore, clock: FakeClock) -> None:
    other = _session(pg_store)
    try:
        other.execute("SELECT pg_current_xact_id()")  # an older transaction, still open
        append(pg_store, "later", 3)  # commits first, with a younger xid
        clock.advance(2 * HOUR_US)
        assert retention(pg_store, clock).run_once().outbox_pruned == 0
        other.execute("INSERT INTO outbox (event_id, kind, run_id, envelope, created_us) "
                      "VALUES ('late', 'step_queued', 'late', '{}', %s)", (T0,))
        other.commit()
    finally:
        other.close()
    assert ids(pg_store)[0] == "late"  # delivery order: the older transaction first
    assert pruned(pg_store, clock, 4) == 4
    assert ids(pg_store) == []
