"""Graph checkpoints and the store: on SQLite and on PostgreSQL (a fresh, non-default schema per test)
LangGraph's tables go beside the store's tables, and retention deletes the checkpoint threads of a run
that ages out while those of a live run stay."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.langgraph import graph_step_types
from fleetforge.adapters.executors.langgraph.checkpoints import GraphCheckpoints, checkpointer, thread_id
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.retention import Retention, RetentionSettings
from fleetforge.core.runtime import Runtime
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.retention import RetentionStore
from fleetforge.ports.store import Store
from tests.conftest import PG_DSN, FakeClock, MakeStore
from tests.integration.langgraph_support import graph_spec, need_langgraph, run_specs

DAY_US = 86_400_000_000
SETTINGS = RetentionSettings(outbox_window_s=None, run_window_s=86400.0, batch=1)


@pytest.fixture
def store(make_store: MakeStore) -> Iterator[Store]:
    """A migrated store on the real clock (the worker's leases need it)."""
    need_langgraph()
    s = make_store(clock=SystemClock())
    s.migrate()
    yield s


def _waiting(**inputs: Any) -> dict[str, Any]:
    """The example graph, then a step waiting for an approval: the run stays open after the graph."""
    spec = graph_spec(**inputs)
    spec["steps"].append({"id": "after", "type": "tool", "depends_on": ["graph"], "approval": {},
                          "inputs": {"tool": "noop", "args": {}}})
    return spec


def _run_until_waiting(store: Store, spec: dict[str, Any]) -> str:
    """Submit `spec` and work until its step `after` waits for its approval (the run stays open)."""

    async def go() -> str:
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()),
                                        prices=PriceTable(), llm_base_url=None, llm_api_key=None, sim_sleep=False)
            rt = Runtime(store, executors=executors, packs=default_packs(), step_types=graph_step_types())
            rid = rt.submit(spec)
            stop = asyncio.Event()
            task = asyncio.create_task(rt.worker("w", poll_interval_s=0.01).run(stop=stop))
            deadline = time.monotonic() + 60
            while {s.step_id: s.status for s in store.get_steps(rid)}.get("after") != "waiting_approval":
                assert time.monotonic() < deadline and not task.done(), store.get_steps(rid)
                await asyncio.sleep(0.05)
            stop.set()
            await task
            return rid

    return asyncio.run(go())


def _checkpoints(store: Store, thread: str) -> int:
    async def count() -> int:
        database, schema = store.database, getattr(store, "schema", "")  # type: ignore[attr-defined]
        async with checkpointer(database, schema) as saver:
            return len([c async for c in saver.alist({"configurable": {"thread_id": thread}})])
    return asyncio.run(count())


def _prune(store: Store, clock: FakeClock) -> Retention:
    rs: RetentionStore = store  # type: ignore[assignment]
    return Retention(rs, SETTINGS, holder="r1", clock=clock, checkpoints=GraphCheckpoints.for_store(rs))


def test_retention_deletes_the_checkpoints_of_an_aged_out_run_and_keeps_a_live_ones(
        store: Store, clock: FakeClock) -> None:
    (done,) = run_specs(store, [graph_spec()])
    (fresh,) = run_specs(store, [graph_spec(seed=8)])
    live = _run_until_waiting(store, _waiting())
    statuses = {rid: (r.status if (r := store.get_run(rid)) else None) for rid in (done, live, fresh)}
    assert statuses == {done: "succeeded", live: "running", fresh: "succeeded"}
    threads = {rid: thread_id(rid, "graph") for rid in (done, live, fresh)}
    assert all(_checkpoints(store, t) >= 5 for t in threads.values())  # a checkpoint per super-step
    finished = {rid: r.finished_us or 0 for rid in (done, fresh) if (r := store.get_run(rid))}
    assert 0 < finished[done] < finished[fresh]
    clock.now = finished[fresh] + DAY_US  # `done` finished more than a day ago, `fresh` exactly a day ago

    assert _prune(store, clock).run_once(dry_run=True).checkpoint_threads_pruned == 0  # counted only for real
    report = _prune(store, clock).run_once()
    assert (report.runs_pruned, report.checkpoint_threads_pruned) == (1, 1)
    assert store.get_run(done) is None and _checkpoints(store, threads[done]) == 0
    assert _checkpoints(store, threads[live]) >= 5 and _checkpoints(store, threads[fresh]) >= 5

    clock.now += DAY_US  # `fresh` ages out too; `live` never does while it is open
    report = _prune(store, clock).run_once()
    assert (report.runs_pruned, report.checkpoint_threads_pruned) == (1, 1)
    assert _checkpoints(store, threads[fresh]) == 0 and _checkpoints(store, threads[live]) >= 5
    assert store.get_run(live) is not None


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_on_postgres_the_checkpoints_are_in_the_stores_schema(store: Store) -> None:
    schema = getattr(store, "schema", None)
    assert schema is not None  # on SQLite the checkpoints are in the store's file
    (rid,) = run_specs(store, [graph_spec()])
    with psycopg.connect(PG_DSN) as conn:
        found = conn.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_name IN "
                             "('checkpoints', 'checkpoint_writes', 'checkpoint_blobs') AND table_schema = %s",
                             (schema,)).fetchall()
        assert sorted(t for _, t in found) == ["checkpoint_blobs", "checkpoint_writes", "checkpoints"]
        # nothing of this run went to the DSN's default schema
        public = conn.execute("SELECT to_regclass('public.checkpoints')").fetchone()
        if public is not None and public[0] is not None:
            row = conn.execute("SELECT count(*) FROM public.checkpoints WHERE thread_id = %s",
                               (thread_id(rid, "graph"),)).fetchone()
            assert row is not None and row[0] == 0
    assert _checkpoints(store, thread_id(rid, "graph")) >= 5


def test_without_the_langgraph_savers_runs_are_pruned_as_before(store: Store, clock: FakeClock,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (rid,) = run_specs(store, [graph_spec()])
    for name in ("langgraph.checkpoint.sqlite", "langgraph.checkpoint.postgres"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError, as when not installed
    run = store.get_run(rid)
    assert run is not None and run.finished_us is not None
    clock.now = run.finished_us + 2 * DAY_US
    report = _prune(store, clock).run_once()
    assert (report.runs_pruned, report.checkpoint_threads_pruned) == (1, 0)
    assert store.get_run(rid) is None
