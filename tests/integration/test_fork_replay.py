"""Fork and replay on every store (SQLite file, PostgreSQL schema): a fork of an agent run from its third turn
calls the model only from that turn on; a replay of the demo fleet reproduces every run with no call leaving
the process; a tampered record is drift; bad input is a clear error that stores nothing."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fleetforge import Client
from fleetforge.adapters import operations
from fleetforge.adapters.devstack.webhook import WebhookServer
from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet
from fleetforge.core.fork import REUSED_FROM, fork_run
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import Price, PriceTable
from fleetforge.core.replay_report import Tolerance
from fleetforge.core.runtime import Runtime
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor
from fleetforge.ports.store import Store
from tests.conftest import MakeStore


class Counting:
    """An executor that counts the attempts it runs, by step id, and hands them to the real one."""

    def __init__(self, inner: Executor, calls: Counter[str]) -> None:
        self.inner, self.calls = inner, calls

    def estimate(self, step: Any) -> tuple[int, float]:
        return self.inner.estimate(step)

    def target(self, step: Any) -> tuple[str, str]:
        return self.inner.target(step)

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        self.calls[ctx.step.id] += 1
        return await self.inner.execute(ctx)


@dataclass
class Rig:
    store: Store
    runtime: Runtime
    calls: Counter[str]
    tools: ToolRegistry
    tool_calls: Counter[str]

    def drain(self) -> None:
        async def go() -> None:
            await self.runtime.worker("w", concurrency=8, poll_interval_s=0.005).run(until_idle=True)

        asyncio.run(go())


def counted_tools(counter: Counter[str]) -> ToolRegistry:
    """The demo tools, each call counted by name."""
    registry = register_demo_tools(ToolRegistry())
    for name in registry.names():
        tool = registry.get(name)
        assert tool is not None

        if inspect.iscoroutinefunction(tool.fn):
            async def fn(*args: Any, _tool: Any = tool) -> Any:
                counter[_tool.name] += 1
                return await _tool.fn(*args)
        else:
            def fn(*args: Any, _tool: Any = tool) -> Any:  # type: ignore[misc]
                counter[_tool.name] += 1
                return _tool.fn(*args)

        registry.register(name, fn, timeout_s=tool.timeout_s, provider=tool.provider, wants_context=tool.wants_context,
                          parameters=tool.parameters, description=tool.description)
    return registry


@pytest.fixture
def rig(make_store: MakeStore) -> Iterator[Rig]:
    store = make_store(clock=SystemClock())
    store.migrate()
    calls: Counter[str] = Counter()
    tool_calls: Counter[str] = Counter()
    tools = counted_tools(tool_calls)
    http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))  # used from several loops
    executors = build_executors(client=http, tools=tools, prices=PriceTable(), llm_base_url=None, llm_api_key=None,
                                sim_sleep=False)
    executors = {k: (Counting(v, calls) if k in ("llm", "tool", "http") else v) for k, v in executors.items()}
    yield Rig(store, Runtime(store, executors=executors, packs=default_packs()), calls, tools, tool_calls)
    asyncio.run(http.aclose())


AGENT = {"seed": 11, "steps": [
    {"id": "support", "type": "agent",
     "inputs": {"model": "sim-small", "instructions": "Help the customer.", "tools": ["crm_lookup", "weather"],
                "max_turns": 6, "sim_tool_turns": 3}},
    {"id": "wrap", "type": "llm", "depends_on": ["support"],
     "inputs": {"model": "sim-small", "prompt": "Summarize: ${{ steps.support.output.text }}"}},
]}


def agree(store: Store) -> None:
    """The summary from the events equals the one from the state tables (reused steps included)."""
    settle(store)
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)


def test_fork_of_an_agent_from_its_third_turn_calls_the_model_from_there_on(rig: Rig) -> None:
    source = rig.runtime.submit(AGENT)
    rig.drain()
    before = {s.step_id: s for s in rig.store.get_steps(source)}
    assert before["support"].output is not None and before["support"].output["turns"] == 4
    ran = Counter(rig.calls)
    rig.calls.clear()
    fork = fork_run(rig.runtime, source, "support.t3", actor="ops@acme")
    rig.drain()

    early = {sid for sid in before if sid.startswith(("support.t1", "support.t2"))}
    late = {sid for sid in before if sid.startswith(("support.t3", "support.t4"))}
    assert early and late and rig.calls.keys() == late | {"wrap"}  # no model or tool call for turns 1 and 2
    assert all(rig.calls[sid] == ran[sid] for sid in late)
    after = {s.step_id: s for s in rig.store.get_steps(fork)}
    assert after.keys() == before.keys()
    assert {sid for sid, s in after.items() if REUSED_FROM in s.spec} == early
    assert all(after[sid].output == before[sid].output and after[sid].attempt == 0 for sid in early)
    assert after["support"].output == before["support"].output  # the same seed, the same conversation
    assert after["wrap"].output == before["wrap"].output
    attempts = rig.store.get_attempts(fork)
    assert {a.step_id for a in attempts} == late | {"support", "wrap"}
    spent = {a.step_id: a.tokens_used for a in rig.store.get_attempts(source)}
    assert sum(a.tokens_used for a in attempts) == sum(spent[sid] for sid in late | {"support", "wrap"})
    run = rig.store.get_run(fork)
    assert run is not None and run.status == "succeeded"
    origin = rig.store.get_origin(fork)
    assert origin is not None and (origin.source_run, origin.source_step, origin.actor) == (
        source, "support.t3", "ops@acme")
    forked = [json.loads(r.envelope) for r in rig.store.iter_outbox() if r.kind == "run_forked"]
    assert sorted(e["run_id"] for e in forked) == sorted([source, fork])
    assert all(e["payload"]["fork"] == fork and e["payload"]["reused"] == len(early) for e in forked)
    agree(rig.store)


def test_fork_with_a_patch_runs_the_patched_step_and_what_follows(rig: Rig) -> None:
    spec = {"steps": [
        {"id": "a", "type": "tool", "inputs": {"tool": "calculator", "args": {"expression": "1 + 1"}}},
        {"id": "b", "type": "tool", "depends_on": ["a"],
         "inputs": {"tool": "calculator", "args": {"expression": "${{ steps.a.output.result }} * 10"}}},
        {"id": "c", "type": "tool", "depends_on": ["b"],
         "inputs": {"tool": "calculator", "args": {"expression": "${{ steps.b.output.result }} + 1"}}},
    ], "outputs": {"c": "${{ steps.c.output.result }}"}}
    source = rig.runtime.submit(spec)
    rig.drain()
    rig.tool_calls.clear()
    fork = fork_run(rig.runtime, source, "b", patch={"b": {"tool": "calculator", "args": {"expression": "7 * 3"}}})
    rig.drain()
    assert rig.tool_calls == Counter({"calculator": 2})  # b and c; a is reused
    steps = {s.step_id: s for s in rig.store.get_steps(fork)}
    assert [a.step_id for a in rig.store.get_attempts(fork)] == ["b", "c"]
    assert steps["a"].spec[REUSED_FROM] == source
    run = rig.store.get_run(fork)
    assert run is not None and run.outputs == {"c": 22}
    agree(rig.store)
    retention: Any = rig.store
    assert rig.store.get_origin(fork) is not None
    assert retention.delete_runs([fork], "run:") == 1  # retention deletes a fork's origin with it
    assert rig.store.get_origin(fork) is None


def settle(store: Store) -> None:
    """Wait until every committed event is readable (on PostgreSQL, rows of recent commits become readable
    when older transactions on the server end)."""
    deadline = time.monotonic() + 20
    while (summary_from_events(Envelope.from_json(r.envelope) for r in store.iter_outbox())
           != summary_from_store(store)) and time.monotonic() < deadline:
        time.sleep(0.05)


def counts(store: Store) -> tuple[int, int]:
    """Runs and outbox rows, once every committed event is readable."""
    settle(store)
    return len(store.list_runs(limit=10_000)), sum(1 for _ in store.iter_outbox())


@pytest.mark.parametrize(("run", "step", "patch", "error", "says"), [
    ("nope", "support", None, NotFoundError, "no run 'nope'"),
    (None, "nowhere", None, SpecError, "--from: got 'nowhere', expected a step of run"),
    (None, "support.t9", None, SpecError, "or an agent turn it recorded: support.t1"),
    (None, "wrap", {"wrap": {"model": "sim-small"}}, SpecError, "--patch: steps[1].inputs"),
    (None, "wrap", {"wrap": ["not", "inputs"]}, SpecError, "expected a JSON object of step inputs"),
    (None, "wrap", {"support": {"model": "sim-small"}}, SpecError, "is reused from the record"),
    (None, "wrap", {"ghost": {}}, SpecError, "--patch: got step 'ghost'"),
])
def test_bad_fork_input_is_a_clear_error_and_stores_nothing(
        rig: Rig, run: str | None, step: str, patch: Any, error: type[Exception], says: str) -> None:
    source = rig.runtime.submit(AGENT)
    rig.drain()
    before = counts(rig.store)
    with pytest.raises(error) as caught:
        fork_run(rig.runtime, run or source, step, patch=patch)
    assert says in str(caught.value)
    assert counts(rig.store) == before


def run_demo_fleet(rig: Rig, runs: int) -> tuple[list[str], WebhookServer]:
    hook = WebhookServer().start()
    ids = [rig.runtime.submit(json.loads(json.dumps(spec).replace(WEBHOOK_PLACEHOLDER, hook.base_url)))
           for spec in demo_fleet(runs, seed=5)]
    rig.drain()
    return ids, hook


def hook_count(hook: WebhookServer) -> int:
    """Requests the demo's webhook received so far."""
    return sum(hook._seen.values())


def test_replay_of_the_demo_fleet_reproduces_every_run_without_a_call(rig: Rig) -> None:
    ids, hook = run_demo_fleet(rig, 12)
    try:
        rig.calls.clear()
        rig.tool_calls.clear()
        hits = hook_count(hook)
        outbox = counts(rig.store)
        reports = asyncio.run(operations.replay(rig.store, ids, tools=rig.tools))
        assert hook_count(hook) == hits
    finally:
        hook.stop()
    assert not rig.calls and not rig.tool_calls  # no tool, HTTP or model call left the replay
    assert counts(rig.store) == outbox  # the fleet's store saw nothing of it
    assert [r.run_id for r in reports] == ids
    for report in reports:
        assert report.ok, report.to_dict()
        assert report.token_drift == 0 and report.cost_drift_micros == 0
        recorded = rig.store.get_attempts(report.run_id)
        assert report.tokens_recorded == sum(a.tokens_used for a in recorded)
        # every attempt that ran, answered from the record (an agent step's own attempt spans its units: no call)
        ran = [a for a in recorded if a.status in ("succeeded", "failed") and a.provider != "agent"]
        assert report.calls_answered == len(ran)
    assert {r.status_recorded for r in reports} >= {"succeeded", "failed"}


def tamper(store: Store, run_id: str, step_id: str, change: Any) -> None:
    row = next(s for s in store.get_steps(run_id) if s.step_id == step_id)
    row.output = change(row.output)
    with store.transaction() as tx:
        tx.update_steps([row])


def test_a_tampered_record_is_drift(rig: Rig) -> None:
    agent = rig.runtime.submit(AGENT)
    rig.drain()
    rig.calls.clear()
    rig.tool_calls.clear()
    assert asyncio.run(operations.replay(rig.store, [agent], tools=rig.tools))[0].ok

    def other_arguments(output: dict[str, Any]) -> dict[str, Any]:
        call = output["tool_calls"][0]
        call["function"]["arguments"] = json.dumps({"city": "Atlantis"})
        return output

    tamper(rig.store, agent, "support.t2", other_arguments)
    report = asyncio.run(operations.replay(rig.store, [agent], tools=rig.tools))[0]
    assert not report.ok and not report.reproduced
    assert any("asks with other inputs than recorded" in m for m in report.calls_unrecorded)
    drifted = {s.step_id for s in report.steps if not s.reproduced}
    assert "support.t2.ccall_2_0" in drifted and "support" in drifted
    assert not rig.calls and not rig.tool_calls  # the replays called nothing


def test_client_fork_and_replay(make_store: MakeStore) -> None:
    with Client(store=make_store(clock=SystemClock())) as client:
        handle = client.submit(AGENT)
        client.run_until_idle(timeout=60)
        fork = client.fork(handle.run_id, "support.t2", actor="alice")
        client.run_until_idle(timeout=60)
        assert fork.wait(30).status == "succeeded"
        assert client.store.get_origin(fork.run_id) is not None
        report = client.replay(fork.run_id)
        assert report.ok, report.to_dict()
        assert [s.step_id for s in report.steps if s.reused] == ["support.t1", "support.t1.ccall_1_0"]
        with pytest.raises(SpecError):
            client.fork(handle.run_id, "nowhere")


def test_the_tolerance_decides_on_cost_drift(rig: Rig) -> None:
    """Priced at twice the list prices, a reproduced run drifts by exactly its recorded LLM cost."""
    run = rig.runtime.submit(AGENT)
    rig.drain()
    llm = [a for a in rig.store.get_attempts(run) if a.model and a.provider != "agent"]
    recorded = sum(a.cost_used_micros for a in llm)
    table = PriceTable()
    doubled = table.with_entries({"sim-small": Price(*(2 * x for x in (table.price("sim-small").input,
                                                                         table.price("sim-small").cached_input,
                                                                         table.price("sim-small").output)))})
    strict, loose = (asyncio.run(operations.replay(rig.store, [run], tools=rig.tools, prices=doubled,
                                                   tolerance=Tolerance(cost_usd=usd)))[0] for usd in (0.0, 1.0))
    assert recorded > 0 and strict.reproduced and strict.token_drift == 0
    assert abs(strict.cost_drift_micros - recorded) <= len(llm)  # each attempt's cost is rounded to 1 µUSD
    assert not strict.ok and not strict.within_tolerance
    assert loose.ok
