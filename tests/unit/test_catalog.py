"""Every envelope the runtime writes carries exactly the payload fields its catalog entry lists."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from fleetforge.adapters.cli.wiring import build_runtime, config_from_env
from fleetforge.adapters.devstack.webhook import WebhookServer
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet
from fleetforge.core.fork import fork_run
from fleetforge.domain.names import CATALOG, EventKind

_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "json": (dict, list, str, int, float)}


def test_demo_events_match_catalog(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    hook = WebhookServer().start()

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            rt = build_runtime(store, client, config=config_from_env(), sim_sleep=False)
            for spec in demo_fleet(24, seed=11):
                rt.submit(json.loads(json.dumps(spec).replace(WEBHOOK_PLACEHOLDER, hook.base_url)))
            await rt.worker("w", concurrency=8, poll_interval_s=0.001).run(until_idle=True)
            done = store.list_runs(status="succeeded", limit=1)[0]
            fork_run(rt, done.id, rt.scheduler.run_spec(done).steps[-1].id, actor="test")  # run_forked, step_reused
            await rt.worker("w", concurrency=8, poll_interval_s=0.001).run(until_idle=True)

    try:
        asyncio.run(go())
    finally:
        hook.stop()
    seen: set[EventKind] = set()
    optional: set[tuple[EventKind, str]] = set()
    for record in store.iter_outbox():
        env = json.loads(record.envelope)
        kind = EventKind(env["kind"])
        seen.add(kind)
        fields = {f.name: f for f in CATALOG[kind].fields}
        assert {n for n, f in fields.items() if not f.optional} <= set(env["payload"]) <= set(fields), kind
        optional.update((kind, n) for n in env["payload"] if fields[n].optional)
        for name, value in env["payload"].items():
            assert isinstance(value, _TYPES[fields[name].type]), (kind, name, value)
        assert (env["step_id"] is None) == (CATALOG[kind].scope == "run")
    by_operators = {EventKind.APPROVAL_REQUESTED, EventKind.APPROVAL_GRANTED, EventKind.APPROVAL_DENIED,
                    EventKind.RUN_PAUSED, EventKind.RUN_RESUMED, EventKind.STEP_PATCHED,
                    EventKind.COMPENSATION_QUEUED}  # held against the catalog in tests/integration/test_operators.py
    assert seen >= set(EventKind) - {EventKind.STEP_DEFERRED, EventKind.RUN_CANCELED} - by_operators
    # the demo's agents: their units' events carry the optional fields (and only theirs do)
    assert {(EventKind.TOOL_CALL, "call_id"), (EventKind.STEP_DENIED, "tool"), (EventKind.STEP_QUEUED, "agent"),
            (EventKind.STEP_SUCCEEDED, "agent"), (EventKind.POLICY_DECISION, "agent")} <= optional
