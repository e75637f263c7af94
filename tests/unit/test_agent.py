"""The `agent` step on a real SQLite store with the simulator: each LLM turn and tool call is a child step
with its own attempt, ledger row, events and guardrail decisions; the loop ends on a final answer or at
max_turns; a denied tool call is answered to the model as an error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.domain.errors import SpecError

CALLS: list[dict[str, Any]] = []


def _lookup(args: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(args)
    return {"customer": args.get("customer_id"), "tier": "gold"}


def make_runtime(path: Path) -> tuple[Runtime, SqliteStore, httpx.AsyncClient]:
    store = SqliteStore(str(path))
    store.migrate()
    tools = register_demo_tools(ToolRegistry())
    tools.register("lookup", _lookup, parameters={"type": "object", "properties": {
        "customer_id": {"type": "integer"}}, "required": ["customer_id"]}, description="Find a customer.")
    client = httpx.AsyncClient()
    executors = build_executors(client=client, tools=tools, prices=PriceTable(), llm_base_url=None,
                                llm_api_key=None, sim_sleep=False)
    return Runtime(store, executors=executors, packs=default_packs()), store, client


def agent_spec(**inputs: Any) -> dict[str, Any]:
    base = {"model": "sim-small", "instructions": "Help the customer.", "tools": ["lookup", "weather"],
            "max_turns": 6, "sim_tool_turns": 3}
    return {"seed": 7, "steps": [{"id": "support", "type": "agent", "inputs": {**base, **inputs}}]}


def run_all(rt: Runtime, client: httpx.AsyncClient) -> None:
    async def go() -> None:
        async with client:
            await rt.worker("w1").run(until_idle=True)

    asyncio.run(go())


def test_agent_loop_against_the_simulator(tmp_path: Path) -> None:
    CALLS.clear()
    rt, store, client = make_runtime(tmp_path / "s.db")
    rid = rt.submit(agent_spec(sim_parallel_calls=2))
    run_all(rt, client)
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded"
    steps = {s.step_id: s for s in store.get_steps(rid)}
    assert sorted(steps) == sorted([
        "support", "support.t1", "support.t1.ccall_1_0", "support.t1.ccall_1_1",
        "support.t2", "support.t2.ccall_2_0", "support.t2.ccall_2_1",
        "support.t3", "support.t3.ccall_3_0", "support.t3.ccall_3_1", "support.t4"])
    assert all(s.status == "succeeded" for s in steps.values())
    out = steps["support"].output
    assert out is not None and out["turns"] == 4 and len(out["tool_calls"]) == 6
    assert [c["name"] for c in out["tool_calls"]] == ["lookup", "weather", "weather", "lookup", "lookup", "weather"]
    assert all(isinstance(a["customer_id"], int) for a in CALLS) and len(CALLS) == 3
    tool_msgs = [m for m in out["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 6 and json.loads(tool_msgs[0]["content"])["tier"] == "gold"
    attempts = store.get_attempts(rid)
    turns = [a for a in attempts if a.step_id.count(".") == 1]
    assert len(turns) == 4 and all(a.tokens_used > 0 and a.status == "succeeded" for a in turns)
    agree(store)
    events = [json.loads(r.envelope) for r in store.iter_outbox() if r.run_id == rid]
    spans = [e["step_id"] for e in events if e["kind"] == "step_started"]
    assert spans[0] == "support" and spans.count("support") == 1 and len(spans) == 11
    # same seed, same run: deterministic
    rt2, store2, client2 = make_runtime(tmp_path / "s2.db")
    rid2 = rt2.submit(agent_spec(sim_parallel_calls=2))
    run_all(rt2, client2)
    assert store2.get_steps(rid2)[0].output["text"] == out["text"]  # type: ignore[index]


def agree(store: SqliteStore) -> None:
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)


def test_max_turns_is_a_clear_failure(tmp_path: Path) -> None:
    rt, store, client = make_runtime(tmp_path / "s.db")
    rid = rt.submit(agent_spec(max_turns=2, sim_tool_turns=5))
    run_all(rt, client)
    run = store.get_run(rid)
    assert run is not None and run.status == "failed" and run.error_kind == "max_turns"
    assert {s.step_id: s.status for s in store.get_steps(rid)}["support"] == "failed"
    agree(store)


def test_denied_tool_call_is_answered_to_the_model(tmp_path: Path) -> None:
    rt, store, client = make_runtime(tmp_path / "s.db")
    spec = agent_spec(sim_tool_turns=2)
    spec["packs"] = [{"name": "tool_acl", "deny": ["weather"]}]
    rid = rt.submit(spec)
    run_all(rt, client)
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded"
    steps = {s.step_id: s for s in store.get_steps(rid)}
    assert steps["support.t2.ccall_2_0"].status == "denied"
    out = steps["support"].output
    assert out is not None and [c["ok"] for c in out["tool_calls"]] == [True, False]
    assert "denied by tool_acl" in out["messages"][-2]["content"]
    denies = [d for d in store.get_decisions(rid) if d.effect == "deny"]
    assert [(d.step_id, d.pack) for d in denies] == [("support.t2.ccall_2_0", "tool_acl")]
    agree(store)


@pytest.mark.parametrize(("inputs", "field"), [
    ({"max_turns": 0}, "max_turns"),
    ({"max_turns": "3"}, "max_turns"),
    ({"tools": "lookup"}, "tools"),
    ({"tools": ["a", "a"]}, "tools"),
    ({"tool_choice": "always"}, "tool_choice"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"model": ""}, "model"),
])
def test_bad_agent_inputs_are_submit_errors(tmp_path: Path, inputs: dict[str, Any], field: str) -> None:
    rt, store, _ = make_runtime(tmp_path / "s.db")
    with pytest.raises(SpecError, match=rf"steps\[0\]\.inputs\.{field}"):
        rt.submit(agent_spec(**inputs))
    assert store.list_runs() == []


def test_step_ids_in_an_agents_namespace_are_refused(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path / "s.db")
    spec = agent_spec()
    spec["steps"].append({"id": "support.t1", "type": "tool", "inputs": {"tool": "noop"}})
    with pytest.raises(SpecError, match=r"steps\[1\]\.id.*'support\.'"):
        rt.submit(spec)


def test_trace_nests_agent_then_turns_and_tool_calls(tmp_path: Path) -> None:
    from fleetforge.core.exporting import SpanKind, TraceAssembler, genai_attributes
    from fleetforge.domain.envelope import Envelope

    rt, store, client = make_runtime(tmp_path / "s.db")
    rid = rt.submit(agent_spec(sim_tool_turns=1))
    run_all(rt, client)
    asm = TraceAssembler()
    spans = [sp for r in store.iter_outbox() if r.run_id == rid
             for sp in asm.feed(Envelope.from_dict(json.loads(r.envelope)))]
    by_id = {sp.span_id: sp for sp in spans}
    agent = next(sp for sp in spans if sp.kind is SpanKind.AGENT)
    assert agent.name == "invoke_agent sim-small"
    chats = [sp for sp in spans if sp.kind is SpanKind.LLM]
    tools = [sp for sp in spans if sp.kind is SpanKind.TOOL]
    assert [by_id[by_id[sp.parent_span_id].parent_span_id].span_id for sp in chats] == \
        [agent.span_id] * len(chats)  # chat -> its step attempt -> invoke_agent
    first = by_id[by_id[chats[0].parent_span_id].parent_span_id]
    assert [by_id[by_id[sp.parent_span_id].parent_span_id].span_id for sp in tools] == \
        [chats[0].span_id]  # execute_tool -> its step attempt -> chat of the turn that asked for it
    assert first is agent and chats[0].step_id == "support.t1"
    assert [sp.name for sp in tools] == ["execute_tool lookup"] and len(chats) == 2
    turn = next(st for st in store.get_steps(rid) if st.step_id == "support.t1")
    (asked,) = (turn.output or {})["tool_calls"]
    assert [genai_attributes(sp) for sp in tools] == [{
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup", "gen_ai.tool.call.id": asked["id"]}]
    assert genai_attributes(agent)["gen_ai.operation.name"] == "invoke_agent"
    assert {genai_attributes(sp)["gen_ai.operation.name"] for sp in chats} == {"chat"}
    for sp in spans:  # every span's lineage ends at its parent
        if sp.parent_span_id is not None:
            assert sp.lineage[-1][0] == sp.parent_span_id
