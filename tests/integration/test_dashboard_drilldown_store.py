"""The drill-down of an agent run read from each state store backend (SQLite, PostgreSQL): units grouped
under their agent, per-turn tokens and cost equal to the attempts ledger, denied calls with their deny."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.views.dashboard.drilldown import run_view
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.ports.clock import SystemClock
from tests.conftest import MakeStore


def test_agent_run_view_on_every_backend(make_store: MakeStore) -> None:
    store = make_store(clock=SystemClock())
    store.migrate()
    client = httpx.AsyncClient()
    executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()), prices=PriceTable(),
                                llm_base_url=None, llm_api_key=None, sim_sleep=False)
    rt = Runtime(store, executors=executors, packs=default_packs())
    rid = rt.submit({"seed": 3, "packs": [{"name": "tool_acl", "deny": ["weather"]}], "steps": [
        {"id": "support", "type": "agent", "inputs": {
            "model": "sim-small", "instructions": "Help.", "tools": ["crm_lookup", "weather"], "max_turns": 5,
            "sim_tool_turns": 2, "sim_parallel_calls": 2}}]})

    async def work() -> None:
        async with client:
            await rt.worker("w1").run(until_idle=True)

    asyncio.run(work())
    view = run_view(store, rid)
    assert view is not None and view["status"] == "succeeded"
    assert [s["step_id"] for s in view["steps"]] == ["support"]
    assert {a["step_id"] for a in view["attempts"]} == {"support"}
    assert {d["step_id"] for d in view["policy_decisions"]} <= {"support"}
    step = view["steps"][0]
    ledger = store.get_attempts(rid)
    units = [a for a in ledger if a.step_id.startswith("support.")]
    assert step["units"] == len({a.step_id for a in units}) == len(store.get_steps(rid)) - 1
    assert step["units_usage"]["tokens"] == sum(a.tokens_used for a in units) > 0
    assert step["units_usage"]["cost"] == pytest.approx(sum(a.cost_used_micros for a in units) / 1e6)
    turns = step["transcript"]["turns"]
    assert [t["usage"]["tokens"] for t in turns] == [
        sum(a.tokens_used for a in ledger if a.step_id == f"support.t{k}") for k in range(1, len(turns) + 1)]
    calls = [c for t in turns for c in t["calls"]]
    output = next(s.output for s in store.get_steps(rid) if s.step_id == "support")
    assert output is not None
    assert [(c["name"], c["step_id"]) for c in calls] == [(c["name"], c["step"]) for c in output["tool_calls"]]
    denied = [c for c in calls if c["status"] == "denied"]
    assert denied and all([d["effect"] for d in c["decisions"]] == ["deny"] for c in denied)
    assert all("denied by tool_acl" in c["result"]["text"] for c in denied)
    assert run_view(store, "no-such-run") is None

