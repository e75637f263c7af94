"""Replay and fork of runs people steered, on every store (SQLite file, PostgreSQL schema): approvals granted,
denied and timed out (a step's and an agent tool call's), a breakpoint resumed with a patch, a pause, and
compensations each replay with zero drift and no call; a changed or missing answer is a difference, not a
hang; a fork keeps a reused approved step (or passed breakpoint) and asks (pauses) again for a re-executed one."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleetforge import Client
from fleetforge.adapters.client import RunHandle
from fleetforge.core.fork import REUSED_FROM
from fleetforge.core.replay_report import ReplayReport
from fleetforge.ports.clock import SystemClock
from tests.conftest import MakeStore
from tests.integration.test_fork_replay import counted_tools


@pytest.fixture
def tool_calls() -> Counter[str]:
    return Counter()


@pytest.fixture
def client(make_store: MakeStore, tool_calls: Counter[str]) -> Iterator[Client]:
    c = Client(store=make_store(clock=SystemClock()))
    c.tools = counted_tools(tool_calls)  # the demo tools, each call counted by name
    yield c
    c.close()


def _tool(sid: str, *deps: str, tool: str = "calculator", expression: str = "1+1", **extra: Any) -> dict[str, Any]:
    return {"id": sid, "type": "tool", "depends_on": list(deps),
            "inputs": {"tool": tool, "args": {"expression": expression}}, **extra}


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def waiting(handle: RunHandle) -> list[str]:
    return [sid for sid, s in handle.result().steps.items() if s.status == "waiting_approval"]


def replay(client: Client, run_id: str, calls: Counter[str], timeout: float = 60.0) -> ReplayReport:
    """The replay of `run_id`, checked to call no tool (`calls` counts them) and to end before its timeout."""
    before = Counter(calls)
    report = client.replay(run_id, timeout=timeout)
    assert not any("did not finish" in d for d in report.differences), "the replay waited for its timeout"
    assert calls == before and not report.calls_unrecorded  # nothing ran outside the record
    return report


def reproduced(report: ReplayReport, answers: int) -> None:
    assert report.ok, report.to_dict()
    assert report.token_drift == 0 and report.cost_drift_micros == 0
    assert report.approvals_answered == answers


APPROVED = {"steps": [_tool("a"), _tool("pay", "a", approval={"timeout_ms": 600_000}), _tool("after", "pay")]}


def approved_run(client: Client) -> RunHandle:
    handle = client.submit(APPROVED)
    with client.worker(poll_interval_s=0.01):
        _until(lambda: waiting(handle) == ["pay"])
        handle.approve("pay", reason="within limits", actor="alice")
        assert handle.wait(20).status == "succeeded"
    return handle


def test_an_approved_step_replays_with_its_answer(client: Client, tool_calls: Counter[str]) -> None:
    handle = approved_run(client)
    reproduced(replay(client, handle.run_id, tool_calls), 1)


def test_a_denied_step_and_its_compensation_replay_as_they_ran(client: Client, tool_calls: Counter[str]) -> None:
    spec = {"steps": [_tool("charge", approval={}, execution={"compensation": {"step": "undo"}}),
                      _tool("undo", "charge", expression="2*3")]}
    handle = client.submit(spec)
    with client.worker(poll_interval_s=0.01):
        _until(lambda: waiting(handle) == ["charge"])
        handle.deny("charge", "wrong customer", actor="gus")
        result = handle.wait(20)
    assert (result.status, result.steps["undo"].status) == ("failed", "succeeded")
    report = replay(client, handle.run_id, tool_calls)
    reproduced(report, 1)
    assert report.status_replayed == "failed"


def test_a_timed_out_approval_replays_as_a_timeout(client: Client, tool_calls: Counter[str]) -> None:
    handle = client.submit({"steps": [_tool("pay", approval={"timeout_ms": 1}), _tool("after", "pay")]})
    with client.worker(poll_interval_s=0.01):
        result = handle.wait(30)
    assert (result.status, result.error) == ("failed", "approval_timeout")
    report = replay(client, handle.run_id, tool_calls)
    assert report.ok, report.to_dict()
    assert {s.step_id: s.attempts_replayed for s in report.steps}["pay"] == ["denied:approval_timeout"]


@pytest.mark.parametrize("allow", [True, False])
def test_an_agents_tool_call_approved_or_denied_replays(client: Client, tool_calls: Counter[str], allow: bool) -> None:
    handle = client.submit({"steps": [{"id": "bot", "type": "agent", "approval": {"tools": ["calculator"]},
                                       "inputs": {"model": "sim-small", "instructions": "Compute.",
                                                  "tools": ["calculator", "noop"], "max_turns": 4,
                                                  "sim_tool_turns": 1,
                                                  "messages": [{"role": "user", "content": "6*7?"}]}}]})
    with client.worker(poll_interval_s=0.01):
        _until(lambda: len(waiting(handle)) == 1)
        [call] = waiting(handle)
        if allow:
            handle.approve(call, actor="eve")
        else:
            handle.deny(call, "not today", actor="eve")
        assert handle.wait(20).status == "succeeded"
    report = replay(client, handle.run_id, tool_calls)
    reproduced(report, 1)
    assert report.calls_answered >= 1  # the model's turns, from the record
    assert {s.step_id: s.replayed for s in report.steps}[call] == ("succeeded" if allow else "denied")


def test_a_breakpoint_resumed_with_a_patch_and_a_pause_replay(client: Client, tool_calls: Counter[str]) -> None:
    spec = {"breakpoints": ["calc"], "steps": [_tool("a"), _tool("calc", "a"), _tool("z", "calc")],
            "outputs": {"calc": "${{ steps.calc.output.result }}"}}
    handle = client.submit(spec)
    assert handle.pause(actor="dan")  # paused by a person before anything ran, then resumed
    assert handle.resume(actor="dan") == []
    with client.worker(poll_interval_s=0.01):
        _until(lambda: handle.status() == "paused")
        assert handle.resume(patch={"calc": {"tool": "calculator", "args": {"expression": "6*7"}}},
                             actor="carol") == ["calc"]
        result = handle.wait(20)
    assert result.outputs == {"calc": 42}
    reproduced(replay(client, handle.run_id, tool_calls), 0)

    fork = client.fork(handle.run_id, "z")  # calc (passed, patched) is reused: no pause
    rerun = client.fork(handle.run_id, "calc")  # calc runs again: it pauses, with the spec's inputs
    with client.worker(poll_interval_s=0.01):
        assert fork.wait(20).outputs == {"calc": 42}
        _until(lambda: rerun.status() == "paused")
        rerun.resume()
        assert rerun.wait(20).outputs == {"calc": 2}
    reproduced(replay(client, fork.run_id, tool_calls), 0)
    reproduced(replay(client, rerun.run_id, tool_calls), 0)


def test_a_failure_compensation_replays_with_the_recorded_message(client: Client, tool_calls: Counter[str]) -> None:
    spec = {"steps": [
        _tool("charge", expression="1/", execution={"max_attempts": 1, "compensation": {"step": "refund"}}),
        _tool("ship", "charge"),
        {"id": "refund", "type": "tool", "depends_on": ["charge"],
         "inputs": {"tool": "noop", "args": {"why": "${{ steps.charge.error.message }}"}}}]}
    handle = client.submit(spec)
    with client.worker(poll_interval_s=0.01):
        result = handle.wait(20)
    assert (result.status, result.steps["refund"].status) == ("failed", "succeeded")
    reproduced(replay(client, handle.run_id, tool_calls), 0)


def tamper_decisions(client: Client, run_id: str, sql: str) -> None:
    """Change the run's recorded `human_approval` decisions in the store itself."""
    statement = f"{sql} WHERE run_id = '{run_id}' AND pack = 'human_approval'"
    with client.store.transaction() as tx:
        raw: Any = tx
        if hasattr(raw, "execute"):  # PostgreSQL
            raw.execute("tamper", statement)
        else:
            raw.c.execute(statement)


def test_a_changed_answer_is_drift_and_a_missing_one_a_difference(client: Client, tool_calls: Counter[str]) -> None:
    handle = approved_run(client)
    tamper_decisions(client, handle.run_id, "UPDATE policy_decisions SET effect = 'deny'")
    report = replay(client, handle.run_id, tool_calls)
    assert not report.ok and report.status_replayed == "failed"
    steps = {s.step_id: s for s in report.steps}
    assert steps["pay"].differences == ["status: recorded succeeded, replayed denied",
                                        "attempts: recorded ['succeeded'], replayed ['denied:policy_denied']",
                                        "output differs from the record"]

    tamper_decisions(client, handle.run_id, "DELETE FROM policy_decisions")
    report = replay(client, handle.run_id, tool_calls)
    assert not report.ok and report.status_replayed == "canceled"
    assert "step pay waits for approval, and the record has no answer for it" in report.differences


def test_a_fork_reuses_an_approved_step_and_asks_again_for_a_rerun_one(
        client: Client, tool_calls: Counter[str]) -> None:
    source = approved_run(client)
    later = client.fork(source.run_id, "after", actor="alice")
    again = client.fork(source.run_id, "pay", actor="alice")
    with client.worker(poll_interval_s=0.01):
        assert later.wait(20).status == "succeeded"  # pay is reused: nobody is asked
        _until(lambda: waiting(again) == ["pay"])
        again.approve("pay", actor="bob")
        assert again.wait(20).status == "succeeded"
    steps = {s.step_id: s for s in client.store.get_steps(later.run_id)}
    assert steps["pay"].spec[REUSED_FROM] == source.run_id
    assert not [d for d in client.store.get_decisions(later.run_id) if d.pack == "human_approval"]
    reproduced(replay(client, later.run_id, tool_calls), 0)
    reproduced(replay(client, again.run_id, tool_calls), 1)
