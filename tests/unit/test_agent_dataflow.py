"""References in an `agent` step's inputs: checked at submit like any step's, resolved at the agent's first
claim before its pre-hook guardrails, kept in its row, and the same for every later turn (also after the
worker restarts)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.domain.errors import SpecError
from fleetforge.domain.models import StepSpec
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor
from tests.unit.test_agent import agree

EMAIL = "alice@example.com"


class Recording:
    """The LLM executor, recording the inputs of every call (what the model is sent)."""

    def __init__(self, inner: Executor) -> None:
        self.inner, self.seen = inner, []  # type: list[dict[str, Any]]

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        return self.inner.estimate(step)

    def target(self, step: StepSpec) -> tuple[str, str]:
        return self.inner.target(step)

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        self.seen.append(json.loads(json.dumps(ctx.inputs)))
        return await self.inner.execute(ctx)


def make(path: Path) -> tuple[Runtime, SqliteStore, Recording]:
    store = SqliteStore(path)
    store.migrate()
    tools = ToolRegistry()
    tools.register("crm", lambda args: {"text": f"customer {EMAIL} asks for a refund", "n": 3},
                   parameters={"type": "object", "properties": {}})
    tools.register("noop", lambda args: {"ok": True}, parameters={"type": "object", "properties": {}})
    executors = build_executors(client=httpx.AsyncClient(), tools=tools, prices=PriceTable(), llm_base_url=None,
                                llm_api_key=None, sim_sleep=False)
    llm = executors["llm"] = Recording(executors["llm"])
    return Runtime(store, executors=executors, packs=default_packs()), store, llm


def drain(rt: Runtime) -> None:
    asyncio.run(rt.worker("w1").run(until_idle=True))


def flow_spec(**agent: Any) -> dict[str, Any]:
    inputs = {"model": "sim-small", "instructions": "Ticket ${{ inputs.ticket }}: ${{ steps.plan.output.text }}",
              "tools": ["noop"], "max_turns": "${{ inputs.turns }}", "sim_tool_turns": 2, **agent.pop("inputs", {})}
    return {"seed": 3, "inputs": {"ticket": "T-7", "turns": 4},
            "steps": [{"id": "plan", "type": "tool", "inputs": {"tool": "crm"}},
                      {"id": "act", "type": "agent", "depends_on": ["plan"], "inputs": inputs, **agent}]}


def _agent(**inputs: Any) -> dict[str, Any]:
    spec = flow_spec()
    spec["steps"][1]["inputs"].update(inputs)
    return spec


@pytest.mark.parametrize(("spec", "match"), [
    (_agent(instructions="${{ steps.nope.output.text }}"),
     r"steps\[1\]\.inputs\.instructions: .*nope.*a known step id"),
    (_agent(instructions="${{ steps.act.output }}"), r"steps\[1\]\.inputs\.instructions: .*own output"),
    (_agent(instructions="${{ steps.plan.output..x }}"), r"steps\[1\]\.inputs\.instructions: .*a name after"),
    (_agent(instructions="${{ env.HOME }}"), r"steps\[1\]\.inputs\.instructions: .*root 'env'"),
    (_agent(instructions="${{ inputs.missing }}"), r"steps\[1\]\.inputs\.instructions: .*missing"),
    (_agent(messages=[{"role": "user", "content": "${{ steps.plan.output.text"}]),
     r"steps\[1\]\.inputs\.messages\[0\]\.content: .*without its closing"),
    (_agent(max_turns=0), r"steps\[1\]\.inputs\.max_turns"),
    ({**_agent(), "steps": [_agent()["steps"][1] | {"depends_on": []}, _agent()["steps"][0]]},
     r"steps\[0\]\.inputs\.instructions: .*add 'plan' to depends_on"),
])
def test_bad_references_in_agent_inputs_are_submit_errors(tmp_path: Path, spec: dict[str, Any], match: str) -> None:
    rt, store, _ = make(tmp_path / "s.db")
    with pytest.raises(SpecError, match=match):
        rt.submit(spec)
    assert store.list_runs() == []


def test_references_resolve_at_first_claim_with_their_json_types(tmp_path: Path) -> None:
    rt, store, llm = make(tmp_path / "s.db")
    rid = rt.submit(flow_spec())
    drain(rt)
    steps = {s.step_id: s for s in store.get_steps(rid)}
    assert store.get_run(rid).status == "succeeded"  # type: ignore[union-attr]
    expected = f"Ticket T-7: customer {EMAIL} asks for a refund"
    resolved = steps["act"].spec["inputs"]
    assert resolved["instructions"] == expected and resolved["max_turns"] == 4  # a whole value keeps its type
    assert all(call["messages"][0] == {"role": "system", "content": expected} for call in llm.seen)
    assert len(llm.seen) == 3 and steps["act"].output["turns"] == 3  # type: ignore[index]
    started = [json.loads(r.envelope)["payload"] for r in store.iter_outbox()
               if r.kind == "step_started" and json.loads(r.envelope)["step_id"] == "act"]
    assert [p["inputs"] for p in started] == [resolved]
    agree(store)


def test_later_turns_keep_the_first_resolution_after_a_restart(tmp_path: Path) -> None:
    rt, store, _ = make(tmp_path / "s.db")
    rid = rt.submit(flow_spec())
    with store.transaction() as tx:  # plan runs; the agent's first claim resolves and leases turn 1
        [plan], _ = rt.scheduler.claim(tx, "w0", store.clock.now_us(), 1)
    from fleetforge.core.scheduler import Outcome

    out = ExecutionResult({"text": "first answer", "n": 1})
    with store.transaction() as tx:
        rt.scheduler.complete(tx, [Outcome(plan, store.clock.now_us(), result=out)], store.clock.now_us())
    with store.transaction() as tx:
        claims, _ = rt.scheduler.claim(tx, "w0", store.clock.now_us(), 4)
    assert [c.step.step_id for c in claims] == ["act.t1"]
    with store.transaction() as tx:  # were the references resolved again, they would read this
        tx.c.execute("UPDATE steps SET output = ? WHERE run_id = ? AND step_id = 'plan'",  # type: ignore[attr-defined]
                     (json.dumps({"text": "changed", "n": 9}), rid))
    rt2, _, llm2 = make(tmp_path / "s.db")  # a new process: nothing cached
    with store.transaction() as tx:  # the old worker died: its lease of turn 1 is reaped and retried
        tx.c.execute("UPDATE steps SET lease_expires_us = 1 WHERE run_id = ? AND step_id = 'act.t1'",  # type: ignore[attr-defined]
                     (rid,))
    drain(rt2)
    assert store.get_run(rid).status == "succeeded"  # type: ignore[union-attr]
    assert {c["messages"][0]["content"] for c in llm2.seen} == {"Ticket T-7: first answer"}
    assert len(llm2.seen) == 3  # turn 1 again (reaped), 2 and 3 (the answer)
    assert store.get_steps(rid)[1].spec["inputs"]["max_turns"] == 4  # not 9: never resolved again


def test_missing_path_fails_the_agent_with_validation_before_any_unit(tmp_path: Path) -> None:
    rt, store, llm = make(tmp_path / "s.db")
    rid = rt.submit(_agent(instructions="${{ steps.plan.output.items[0] }}"))
    drain(rt)
    run = store.get_run(rid)
    assert run is not None and run.status == "failed" and run.error_kind == "validation"
    assert sorted(s.step_id for s in store.get_steps(rid)) == ["act", "plan"] and llm.seen == []
    failed = [json.loads(r.envelope)["payload"] for r in store.iter_outbox() if r.kind == "step_failed"]
    assert "steps.plan.output has no key 'items'" in failed[0]["error"]
    agree(store)


def test_pii_redaction_redacts_an_upstream_email_before_the_first_turn(tmp_path: Path) -> None:
    rt, store, llm = make(tmp_path / "s.db")
    rid = rt.submit(flow_spec(policy={"packs": ["pii_redaction"]}))
    drain(rt)
    assert store.get_run(rid).status == "succeeded"  # type: ignore[union-attr]
    first = llm.seen[0]["messages"][0]["content"]
    assert first == "Ticket T-7: customer [REDACTED:email] asks for a refund"
    assert all(EMAIL not in json.dumps(c) for c in llm.seen)
    steps = {s.step_id: s for s in store.get_steps(rid)}
    assert EMAIL in json.dumps(steps["plan"].output)  # the upstream step does not redact: kept as returned
    assert all(EMAIL not in json.dumps(s.spec) for s in steps.values())
    assert all(EMAIL not in r.envelope for r in store.iter_outbox())
    decisions = [(d.step_id, d.hook, d.effect) for d in store.get_decisions(rid) if d.step_id == "act"]
    assert ("act", "pre", "modify") in decisions
    agree(store)


def test_a_parked_agent_is_pending_and_running_only_while_leased(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetforge.adapters.cli.main import app
    from fleetforge.adapters.client import Client
    from fleetforge.core.scheduler import Outcome

    rt, store, _ = make(tmp_path / "state.db")
    rid = rt.submit({"seed": 1, "steps": [{"id": "a", "type": "agent", "inputs": {
        "model": "sim-small", "instructions": "Go.", "tools": ["noop"], "sim_tool_turns": 1}}]})
    client = Client(store=store)

    def shown() -> dict[str, str]:
        """Step statuses as `runs get --json` and the Client show them (they must agree)."""
        got = CliRunner().invoke(app, ["runs", "get", rid, "--json", "--data-dir", str(tmp_path)])
        assert got.exit_code == 0, got.output
        cli = {s["step_id"]: s["status"] for s in json.loads(got.output)["steps"]}
        assert cli == {sid: s.status for sid, s in client.run(rid).result().steps.items()}
        return cli

    now = store.clock.now_us
    with store.transaction() as tx:
        claims, _ = rt.scheduler.claim(tx, "w", now(), 8)
    seen = [shown()]
    while claims:  # each unit: completed, and the next one leased in the same transaction
        c = claims[0]
        result = ExecutionResult({"text": "done"} if c.step.step_id == "a.t2" else
                                 {"text": "", "tool_calls": [{"id": "x", "type": "function",
                                                              "function": {"name": "noop", "arguments": "{}"}}]}
                                 if c.step.step_id == "a.t1" else {"ok": True} if c.step.type == "tool" else
                                 c.inputs.get("output", {}))
        with store.transaction() as tx:
            _, claims, _ = rt.scheduler.complete_and_claim(tx, [Outcome(c, now(), result=result)], now(), "w", 8)
        seen.append(shown())
    assert seen == [
        {"a": "pending", "a.t1": "running"},
        {"a": "pending", "a.t1": "succeeded", "a.t1.cx": "running"},
        {"a": "pending", "a.t1": "succeeded", "a.t1.cx": "succeeded", "a.t2": "running"},
        {"a": "running", "a.t1": "succeeded", "a.t1.cx": "succeeded", "a.t2": "succeeded"},  # leased to settle
        {"a": "succeeded", "a.t1": "succeeded", "a.t1.cx": "succeeded", "a.t2": "succeeded"},
    ]
    assert [r.status for r in client.runs()] == ["succeeded"]
