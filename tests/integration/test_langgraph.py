"""LangGraph graphs as agent steps: the example graph (examples/langgraph) on the simulator and, through
langchain-openai, against a local OpenAI-compatible server; guardrails and budgets on its calls; its
turns and tool calls in `runs get`, in the ledger and in the derived ClickHouse tables."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.langgraph import graph_step_types
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.adapters.http.server import BackgroundServer
from fleetforge.adapters.readers.clickhouse.embedded import EmbeddedAnalytics
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.exporting import SpanKind
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import SpecError
from tests.integration.clickhouse_fleet import assert_exact, open_store
from tests.integration.langgraph_support import graph_spec, need_langgraph, run_specs
from tests.integration.test_agent_openai import ScriptedOpenAI, _call
from tests.integration.test_phoenix import expected as expected_spans

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _langgraph() -> None:
    need_langgraph()


def _children(store: SqliteStore, rid: str) -> dict[str, Any]:
    return {s.step_id: s for s in store.get_steps(rid)}


def test_the_example_graph_on_the_simulator(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    (rid,) = run_specs(store, [graph_spec(packs=[{"name": "tool_acl", "allow": ["lookup_order", "refund"]}])])
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run
    steps = _children(store, rid)
    # the simulator: turn 1 calls lookup_order, turn 2 refund, turn 3 answers (tools in order, one per turn)
    assert sorted(steps) == ["graph", "graph.t1", "graph.t1.ccall_1_0", "graph.t2", "graph.t2.ccall_2_0", "graph.t3"]
    assert [steps[s].type for s in sorted(steps)] == ["agent", "llm", "tool", "llm", "tool", "llm"]
    assert steps["graph.t1.ccall_1_0"].spec["inputs"]["tool"] == "lookup_order"
    assert steps["graph.t2.ccall_2_0"].spec["inputs"]["tool"] == "refund"
    messages = steps["graph"].output["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[0]["content"] == "Order A-1001 arrived broken."  # the reference was resolved
    assert json.loads(messages[2]["content"])["status"] == "delivered"  # the tool really ran
    assert messages[-1]["content"] == steps["graph.t3"].output["text"]
    ledger = {a.step_id: a for a in store.get_attempts(rid)}
    for turn in ("graph.t1", "graph.t2", "graph.t3"):  # reserved before, reconciled after, priced
        a = ledger[turn]
        assert a.status == "succeeded" and a.tokens_reserved > 0 and a.tokens_used == a.input_tokens + a.output_tokens
        assert a.cost_used_micros > 0 and a.model == "sim-small" and a.provider == "sim"
    assert ledger["graph"].tokens_used == 0  # the graph's tokens are its units'
    decisions = [(d.step_id, d.effect) for d in store.get_decisions(rid) if d.pack == "tool_acl"]
    assert ("graph.t1.ccall_1_0", "allow") in decisions and ("graph.t2.ccall_2_0", "allow") in decisions
    events = [r.envelope for r in store.iter_outbox()]
    assert summary_from_events(events) == summary_from_store(store)
    spans = expected_spans(store)
    agent = next(sp for sp in spans if sp.kind is SpanKind.AGENT and sp.step_id == "graph")
    units = [sp for sp in spans if sp.kind is SpanKind.STEP and (sp.step_id or "").startswith("graph.")]
    assert sorted(sp.step_id or "" for sp in units) == sorted(set(steps) - {"graph"})
    by_id = {sp.span_id: sp for sp in spans}
    for sp in units:  # turns under the graph's invoke_agent, each tool call under the chat of its turn
        sid = sp.step_id or ""
        turn = sid.split(".c", 1)[0]
        parent = by_id[sp.parent_span_id or ""]
        assert parent is agent if sid == turn else (parent.step_id == turn and parent.kind is SpanKind.LLM), sid
    assert sorted(sp.kind for sp in spans if sp.parent_span_id in {u.span_id for u in units}
                  and sp.kind is not SpanKind.GUARDRAIL) == sorted([SpanKind.LLM] * 3 + [SpanKind.TOOL] * 2)
    store.close()


def test_a_graph_step_is_checked_at_submit(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    with pytest.raises(SpecError) as err:
        run_specs(store, [graph_spec(entrypoint="no_such_module_here:create_graph")])
    assert "steps[0].inputs.entrypoint" in str(err.value) and "no_such_module_here" in str(err.value)
    with pytest.raises(SpecError) as err:
        run_specs(store, [graph_spec(entrypoint="react_graph:nothing")])
    assert "has no attribute 'nothing'" in str(err.value)
    assert store.list_runs(limit=10) == []
    store.close()


def test_tool_acl_denies_one_tool_and_the_graph_goes_on(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    (rid,) = run_specs(store, [graph_spec(packs=[{"name": "tool_acl", "deny": ["refund"]}])])
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run
    steps = _children(store, rid)
    denied = steps["graph.t2.ccall_2_0"]
    assert denied.status == "denied" and denied.error_kind == "policy_denied"
    assert steps["graph.t1.ccall_1_0"].status == "succeeded"
    tool_message = steps["graph"].output["messages"][4]
    assert tool_message["role"] == "tool" and "denied" in tool_message["content"] and "refund" in \
        tool_message["content"]
    decisions = {(d.step_id, d.pack, d.effect) for d in store.get_decisions(rid)}
    assert ("graph.t2.ccall_2_0", "tool_acl", "deny") in decisions
    kinds = [(e.kind, e.step_id) for e in map(Envelope.from_json, (r.envelope for r in store.iter_outbox()))]
    assert ("step_denied", "graph.t2.ccall_2_0") in kinds
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)
    store.close()


def test_a_run_budget_exhausted_mid_graph_denies_the_turn_and_ends_the_step(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    (rid,) = run_specs(store, [graph_spec(budget={"tokens": 200})])
    run = store.get_run(rid)
    assert run is not None and run.status == "failed" and run.error_kind == "budget_exceeded", run
    steps = _children(store, rid)
    assert steps["graph.t1"].status == "succeeded"
    denied = [s for s in steps.values() if s.status == "denied"]
    assert len(denied) == 1 and denied[0].type == "llm" and denied[0].error_kind == "budget_exceeded"
    assert steps["graph"].status == "failed" and steps["graph"].error_kind == "budget_exceeded"
    ledger = store.get_attempts(rid)
    assert sum(a.tokens_used for a in ledger) <= 200  # nothing ran past the limit
    assert [a.status for a in ledger if a.step_id == denied[0].step_id] == ["denied"]
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)
    store.close()


def test_a_policy_budget_is_reserved_by_each_call_not_by_the_graph_step(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    spec = graph_spec(budget={"tokens": 1000})
    spec["steps"][0]["policy"] = {"budget": {"tokens": 500}}
    (rid,) = run_specs(store, [spec])
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run  # the graph holding 500 too would deny turn 2
    ledger = {a.step_id: a for a in store.get_attempts(rid)}
    assert ledger["graph"].tokens_reserved == 0
    assert [ledger[t].tokens_reserved for t in ("graph.t1", "graph.t2", "graph.t3")] == [500, 500, 500]
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)
    store.close()


SCRIPT: list[dict[str, Any]] = [
    {"role": "assistant", "content": None, "tool_calls": [_call("call_l1", "lookup_order", {"order_id": "A-1001"})]},
    {"role": "assistant", "content": None, "tool_calls": [_call("call_r1", "refund",
                                                                 {"order_id": "A-1001", "amount": 42.5})]},
    {"role": "assistant", "content": "Refunded 42.50 USD on order A-1001."},
]


@pytest.fixture
def openai_server() -> Iterator[tuple[ScriptedOpenAI, str]]:
    api = ScriptedOpenAI(SCRIPT)
    srv = BackgroundServer(Starlette(routes=[Route("/v1/chat/completions", api.completions, methods=["POST"])]),
                           name="openai-test").start()
    try:
        yield api, srv.url.rstrip("/") + "/v1"
    finally:
        srv.stop()


def test_the_example_graph_through_langchain_openai(tmp_path: Path,
                                                    openai_server: tuple[ScriptedOpenAI, str]) -> None:
    api, base_url = openai_server
    store = open_store(tmp_path / "state.db")
    (rid,) = run_specs(store, [graph_spec(model="gpt-4o-mini")], base_url=base_url)
    assert api.errors == []
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run
    assert len(api.bodies) == 3
    first, second, third = api.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["lookup_order", "refund"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][2]["tool_call_id"] == "call_l1"
    assert json.loads(third["messages"][-1]["content"]) == {"order_id": "A-1001", "refunded": 42.5}
    steps = _children(store, rid)
    assert sorted(steps) == ["graph", "graph.t1", "graph.t1.ccall_l1", "graph.t2", "graph.t2.ccall_r1", "graph.t3"]
    assert steps["graph"].output["messages"][-1]["content"] == "Refunded 42.50 USD on order A-1001."
    turns = sorted((a for a in store.get_attempts(rid) if a.step_id.count(".") == 1), key=lambda a: a.step_id)
    # the server's usage: prompt 100 + turn, completion 20
    assert [(a.input_tokens, a.output_tokens) for a in turns] == [(100, 20), (101, 20), (102, 20)]
    assert all(a.provider == "openai" and a.model == "gpt-4o-mini" and a.cost_used_micros > 0 for a in turns)
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)
    store.close()


def test_graph_units_in_the_derived_clickhouse_tables_equal_the_ground_truth(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    with EmbeddedAnalytics(tmp_path / "clickhouse") as analytics:
        analytics.apply()
        analytics.start(store)
        run_specs(store, [graph_spec(seed=s, packs=[{"name": "tool_acl", "deny": ["refund"]}] if s % 2 else None)
                          for s in range(6)] + [graph_spec(seed=99, budget={"tokens": 200})])
        stats = analytics.stop()
        assert stats is not None and stats.failures == 0
        want = assert_exact(store, analytics.analytics)
        assert sum(want["runs"].values()) == 7
        units = analytics.analytics.rows(
            "SELECT count() FROM telemetry.step_events WHERE kind = 'step_succeeded' AND step_id LIKE 'graph.t%'")
        assert units[0][0] == sum(1 for r in store.list_runs(limit=100) for s in store.get_steps(r.id)
                                  if s.step_id.startswith("graph.") and s.status == "succeeded")
    store.close()


def test_pii_redaction_changes_what_the_model_receives(tmp_path: Path,
                                                     openai_server: tuple[ScriptedOpenAI, str]) -> None:
    api, base_url = openai_server
    store = open_store(tmp_path / "state.db")
    (rid,) = run_specs(store, [graph_spec(model="gpt-4o-mini", packs=["pii_redaction"],
                                          entrypoint="tests.integration.langgraph_support:create_leaky_graph")],
                       base_url=base_url)
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run
    assert len(api.bodies) == 3
    for body in api.bodies:
        text = json.dumps(body)
        assert "ada.lovelace@example.com" not in text and "[REDACTED:email]" in text
    decisions = {(d.step_id, d.pack, d.hook, d.effect) for d in store.get_decisions(rid)}
    assert ("graph.t1", "pii_redaction", "pre", "modify") in decisions
    store.close()
    for f in tmp_path.glob("state.db*"):  # the store and the graph's checkpoints: nothing in clear
        assert b"ada.lovelace@example.com" not in f.read_bytes(), f


def test_a_compiled_graph_with_a_sync_node_is_governed_the_same(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    (rid,) = run_specs(store, [graph_spec(entrypoint="tests.integration.langgraph_support:create_sync_compiled_graph")])
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run
    assert sorted(_children(store, rid)) == ["graph", "graph.t1", "graph.t1.ccall_1_0", "graph.t2",
                                             "graph.t2.ccall_2_0", "graph.t3"]
    store.close()


def test_cancel_stops_a_running_graph_before_its_next_call(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")

    async def go() -> str:
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=ToolRegistry(), prices=PriceTable(), llm_base_url=None,
                                        llm_api_key=None, sim_sleep=True)
            rt = Runtime(store, executors=executors, packs=default_packs(), step_types=graph_step_types())
            rid = rt.submit(graph_spec(latency_ms=300))
            work = asyncio.create_task(rt.worker("w", poll_interval_s=0.01).run(until_idle=True))
            while not any(s.step_id == "graph.t1" for s in store.get_steps(rid)):
                await asyncio.sleep(0.01)
            assert rt.cancel(rid)
            await asyncio.wait_for(work, 60)
            return rid

    rid = asyncio.run(go())
    run = store.get_run(rid)
    assert run is not None and run.status == "canceled", run
    steps = _children(store, rid)
    assert set(steps) <= {"graph", "graph.t1"}  # the turn in flight finished; nothing new started
    assert steps["graph"].status == "failed" and steps["graph"].error_kind == "crash"
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)
    store.close()


def test_a_graph_that_makes_its_own_chat_model_is_told_how_to_take_fleetforges(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    entry = "tests.integration.langgraph_support:create_own_model_graph"
    (rid,) = run_specs(store, [graph_spec(entrypoint=entry)])
    run = store.get_run(rid)
    assert run is not None and run.status == "failed"
    graph = next(s for s in store.get_steps(rid) if s.step_id == "graph")
    assert graph.error_kind == "validation"
    events = (Envelope.from_json(r.envelope) for r in store.iter_outbox())
    message = next(str(e.payload["error"]) for e in events if e.kind == "step_failed" and e.step_id == "graph")
    assert f"the entrypoint {entry} takes no `model` parameter: add one (`def create_own_model_graph(model)" \
        in message, message
    assert "SimChatModel" in message and "inputs.model" in message
    assert not [s for s in store.get_steps(rid) if s.step_id.startswith("graph.")]  # no unit ran: nothing paid
    store.close()


def test_tool_calls_are_intercepted_through_the_attribute_toolnode_keeps_its_wrapper_in() -> None:
    """LangGraph takes `awrap_tool_call` only at ToolNode construction: FleetForge sets the attribute the
    constructor stores it in. This fails, naming the version, when an upgrade stores it elsewhere."""
    from langgraph.prebuilt import ToolNode
    from react_graph import TOOLS

    from fleetforge.adapters.executors.langgraph.run import intercept
    from fleetforge.ports.executor import StepFailure

    async def own(request: Any, execute: Any) -> Any:
        return await execute(request)

    node = ToolNode(TOOLS, awrap_tool_call=own)
    seen: list[Any] = []

    def ours(inner: Any) -> Any:
        seen.append(inner)
        return own

    intercept(node, ours)
    assert seen == [own]  # the graph's own interceptor is found where the constructor put it
    intercept(ToolNode(TOOLS), ours)
    assert seen == [own, None]

    class Moved(ToolNode):
        def __getattribute__(self, name: str) -> Any:
            if name == "_awrap_tool_call":
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(StepFailure) as err:
        intercept(Moved(TOOLS), ours)
    assert "langgraph-prebuilt 1." in str(err.value) and "_awrap_tool_call" in str(err.value)
