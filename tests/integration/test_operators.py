"""Operators in control on every store (SQLite file, PostgreSQL schema), through the Python client with an
in-process worker: approvals granted, denied and timed out; a breakpoint resumed with patched inputs;
compensation queued on failure and not otherwise. Every operator event is held against the catalog."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleetforge import Client
from fleetforge.core.exporting import SpanKind, TraceAssembler
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConflictError, SpecError
from fleetforge.domain.names import CATALOG, HUMAN_APPROVAL_PACK, EventKind
from fleetforge.ports.clock import SystemClock
from tests.conftest import MakeStore

_TERMINAL = (EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED, EventKind.RUN_CANCELED)


@pytest.fixture
def client(make_store: MakeStore) -> Iterator[Client]:
    c = Client(store=make_store(clock=SystemClock()))
    yield c
    c.close()


def _tool(sid: str, *deps: str, tool: str = "noop", args: dict[str, Any] | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"id": sid, "type": "tool", "depends_on": list(deps), "inputs": {"tool": tool, "args": args or {}},
            **extra}


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _events(client: Client, run_id: str) -> list[Envelope]:
    """The run's events; once it ended, up to its terminal event (PostgreSQL shows a row only when every
    transaction older than it has ended, on the whole server)."""
    ended = client.run(run_id).result().done
    deadline = time.monotonic() + 20
    while True:
        events = [Envelope.from_json(r.envelope) for r in client.store.iter_outbox() if r.run_id == run_id]
        if not ended or any(e.kind in _TERMINAL for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _status(client: Client, run_id: str, step: str) -> str:
    return {s.step_id: str(s.status) for s in client.store.get_steps(run_id)}[step]


def _check_catalog(events: list[Envelope]) -> None:
    for e in events:
        fields = CATALOG[e.kind].fields
        assert {f.name for f in fields if not f.optional} <= set(e.payload) <= {f.name for f in fields}, e.kind


@pytest.fixture(autouse=True)
def _ground_truth(client: Client) -> Iterator[None]:
    """After each test: the summary from the state tables equals the one from the outbox alone."""
    yield
    deadline = time.monotonic() + 20
    while True:
        want = summary_from_store(client.store)
        got = summary_from_events(Envelope.from_json(r.envelope) for r in client.store.iter_outbox())
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # rows of the last commits may not be visible yet (see _events)
    assert got == want


def test_approved_denied_and_answered_steps(client: Client) -> None:
    spec = {"steps": [_tool("a"), _tool("pay", "a", approval={"timeout_ms": 600_000}), _tool("after", "pay")]}
    ok, no = client.submit(spec), client.submit(spec)
    with client.worker():
        _until(lambda: _status(client, ok.run_id, "pay") == "waiting_approval"
               and _status(client, no.run_id, "pay") == "waiting_approval")
        time.sleep(0.2)  # nothing moves while waiting
        assert ok.status() == "running" and _status(client, ok.run_id, "after") == "pending"
        with pytest.raises(ConflictError, match="not waiting for approval"):
            ok.approve("a")
        with pytest.raises(SpecError, match="non-empty reason"):
            no.deny("pay", "  ")
        ok.approve("pay", reason="looks right", actor="alice")
        no.deny("pay", "amount too high", actor="bob")
        assert ok.wait(20).status == "succeeded"
        done = no.wait(20)
    assert done.status == "failed" and done.error == "policy_denied"
    assert done.steps["pay"].status == "denied" and done.steps["after"].status == "skipped"
    for handle, effect, actor in ((ok, "allow", "alice"), (no, "deny", "bob")):
        [decision] = client.store.get_decisions(handle.run_id)
        assert (decision.pack, decision.effect) == (HUMAN_APPROVAL_PACK, effect)
        events = _events(client, handle.run_id)
        _check_catalog(events)
        requested = next(e for e in events if e.kind is EventKind.APPROVAL_REQUESTED)
        answered = next(e for e in events if e.kind in (EventKind.APPROVAL_GRANTED, EventKind.APPROVAL_DENIED))
        assert answered.payload["actor"] == actor
        assert decision.wait_us == answered.occurred_us - requested.occurred_us >= 200_000
        assert answered.payload["wait_ms"] == decision.wait_us / 1000
    denied = next(e for e in _events(client, no.run_id) if e.kind is EventKind.STEP_DENIED)
    assert denied.payload["reason"] == "human_approval: amount too high"
    for handle in (ok, no):  # in traces: a guardrail span of the step's attempt that spans the wait
        asm = TraceAssembler()
        spans = [sp for e in _events(client, handle.run_id) for sp in asm.feed(e)]
        [span] = [sp for sp in spans if sp.kind is SpanKind.GUARDRAIL and sp.name == HUMAN_APPROVAL_PACK]
        [decision] = client.store.get_decisions(handle.run_id)
        assert (span.step_id, span.attempt) == ("pay", 1)
        assert span.end_us - span.start_us == decision.wait_us


def test_a_wait_past_its_timeout_fails_with_approval_timeout(client: Client) -> None:
    handle = client.submit({"steps": [_tool("pay", approval={"timeout_ms": 1}), _tool("after", "pay")]})
    with client.worker():
        assert handle.wait(30).status == "failed"  # the worker's reaper noticed the deadline, nobody answered
    result = handle.result()
    assert result.error == "approval_timeout" and result.steps["pay"].error_kind == "approval_timeout"
    [decision] = client.store.get_decisions(handle.run_id)
    assert decision.effect == "deny" and "approval.timeout_ms=1" in decision.reason
    kinds = [e.kind for e in _events(client, handle.run_id)]
    assert kinds.index(EventKind.APPROVAL_REQUESTED) < kinds.index(EventKind.APPROVAL_DENIED)


def test_a_breakpoint_resumed_with_patched_inputs_runs_them(client: Client) -> None:
    spec = {"breakpoints": ["calc"], "steps": [
        _tool("a"), _tool("calc", "a", tool="calculator", args={"expression": "1+1"}), _tool("z", "calc")]}
    handle = client.submit(spec)
    with client.worker():
        _until(lambda: handle.status() == "paused")
        time.sleep(0.2)
        assert _status(client, handle.run_id, "calc") == "paused"
        with pytest.raises(SpecError, match=r"patch\.calc\.tool"):  # validated as at submit; nothing changes
            handle.resume(patch={"calc": {"tool": "", "args": {}}}, actor="carol")
        with pytest.raises(SpecError, match=r"patch\.a: got step 'a' with status ended"):
            handle.resume(patch={"a": {"tool": "noop", "args": {}}}, actor="carol")
        assert handle.status() == "paused"
        assert handle.resume(patch={"calc": {"tool": "calculator", "args": {"expression": "6*7"}}},
                             actor="carol") == ["calc"]
        result = handle.wait(20)
    assert result.status == "succeeded"
    assert result.steps["calc"].output == {"expression": "6*7", "result": 42}
    events = _events(client, handle.run_id)
    _check_catalog(events)
    patched = [e for e in events if e.kind is EventKind.STEP_PATCHED]
    assert [(e.step_id, e.payload["actor"], e.payload["changed"]) for e in patched] == [("calc", "carol", ["args"])]
    paused = next(e for e in events if e.kind is EventKind.RUN_PAUSED)
    assert paused.payload["breakpoint"] == "calc"


def test_pause_stops_new_steps_until_resume(client: Client) -> None:
    handle = client.submit({"steps": [_tool("a"), _tool("b", "a")]})
    assert handle.pause(actor="dan") and not handle.pause(actor="dan")
    with client.worker():
        time.sleep(0.5)
        assert handle.status() == "paused" and _status(client, handle.run_id, "a") == "paused"
        assert handle.resume(actor="dan") == []
        assert handle.wait(20).status == "succeeded"
    with pytest.raises(ConflictError, match="not paused"):
        handle.resume()


def test_compensation_is_queued_on_failure_only(client: Client) -> None:
    def spec(expression: str) -> dict[str, Any]:
        return {"steps": [
            _tool("charge", tool="calculator", args={"expression": expression}, execution={
                "max_attempts": 1, "compensation": {"step": "refund"}}),
            _tool("ship", "charge"),
            _tool("refund", "charge", tool="calculator", args={"expression": "${{ steps.charge.error.kind }}"}),
        ]}

    bad, good = client.submit(spec("1/")), client.submit(spec("2+2"))
    with client.worker():
        failed, succeeded = bad.wait(20), good.wait(20)
    assert failed.status == "failed" and failed.steps["charge"].status == "failed"
    assert failed.steps["ship"].status == "skipped"
    assert failed.steps["refund"].status in ("succeeded", "failed")  # it ran, with the error resolved
    started = next(e for e in _events(client, bad.run_id)
                   if e.kind is EventKind.STEP_STARTED and e.step_id == "refund")
    assert started.payload["inputs"]["args"]["expression"] == failed.steps["charge"].error_kind
    queued = next(e for e in _events(client, bad.run_id) if e.kind is EventKind.COMPENSATION_QUEUED)
    assert queued.payload["compensates"] == "charge"
    assert succeeded.status == "succeeded" and succeeded.steps["refund"].status == "skipped"
    assert not any(e.kind is EventKind.COMPENSATION_QUEUED for e in _events(client, good.run_id))
    _check_catalog(_events(client, bad.run_id))


@pytest.mark.parametrize("allow", [True, False])
def test_an_agents_tool_call_waits_and_a_denial_is_answered_to_the_model(client: Client, allow: bool) -> None:
    handle = client.submit({"steps": [{"id": "bot", "type": "agent", "approval": {"tools": ["calculator"]},
                                       "inputs": {"model": "sim-small", "instructions": "Compute.",
                                                  "tools": ["calculator", "noop"], "max_turns": 4,
                                                  "sim_tool_turns": 1,
                                                  "messages": [{"role": "user", "content": "6*7?"}]}}]})
    with client.worker():
        _until(lambda: "waiting_approval" in {s.status for s in handle.result().steps.values()})
        [call] = [sid for sid, s in handle.result().steps.items() if s.status == "waiting_approval"]
        assert call.startswith("bot.t1.c") and handle.result().steps["bot"].status == "pending"
        if allow:
            handle.approve(call, actor="eve")
        else:
            handle.deny(call, "not today", actor="eve")
        result = handle.wait(20)
    assert result.status == "succeeded"  # the loop goes on either way
    [logged] = result.steps["bot"].output["tool_calls"]  # type: ignore[index]
    assert (logged["step"], logged["ok"]) == (call, allow)
    if not allow:
        assert result.steps[call].output == {"error": "denied by human_approval: not today"}
        tool_message = next(m for m in result.steps["bot"].output["messages"]  # type: ignore[index]
                            if m["role"] == "tool")
        assert "denied by human_approval: not today" in tool_message["content"]
    _check_catalog(_events(client, handle.run_id))


def test_an_agent_step_itself_waits_and_a_timed_out_call_is_answered_to_the_model(client: Client) -> None:
    inputs = {"model": "sim-small", "instructions": "Compute.", "tools": ["calculator"], "max_turns": 4,
              "sim_tool_turns": 1, "messages": [{"role": "user", "content": "6*7?"}]}
    whole = client.submit({"steps": [{"id": "bot", "type": "agent", "approval": {}, "inputs": inputs}]})
    calls = client.submit({"steps": [{"id": "bot", "type": "agent", "inputs": inputs,
                                      "approval": {"tools": ["calculator"], "timeout_ms": 1}}]})
    with client.worker():
        _until(lambda: whole.result().steps["bot"].status == "waiting_approval")
        assert set(whole.result().steps) == {"bot"}  # no turn before the approval
        whole.approve("bot", actor="fay")
        assert whole.wait(20).status == "succeeded"
        timed_out = calls.wait(30)
    assert timed_out.status == "succeeded"
    [call] = [s for sid, s in timed_out.steps.items() if ".c" in sid]
    assert (call.status, call.error_kind) == ("denied", "approval_timeout")
    assert call.output == {"error": "denied by human_approval: no answer within approval.timeout_ms=1"}


def test_a_denied_step_with_a_compensation_queues_it(client: Client) -> None:
    handle = client.submit({"steps": [
        _tool("charge", approval={}, execution={"compensation": {"step": "undo"}}),
        _tool("undo", "charge", tool="calculator", args={"expression": "1+1"})]})
    with client.worker():
        _until(lambda: _status(client, handle.run_id, "charge") == "waiting_approval")
        handle.deny("charge", "wrong customer", actor="gus")
        result = handle.wait(20)
    assert (result.status, result.error) == ("failed", "policy_denied")
    assert result.steps["undo"].status == "succeeded"
    queued = next(e for e in _events(client, handle.run_id) if e.kind is EventKind.COMPENSATION_QUEUED)
    assert (queued.step_id, queued.payload["error_kind"]) == ("undo", "policy_denied")


def test_a_reason_in_a_redacting_run_is_never_stored_in_clear(client: Client) -> None:
    handle = client.submit({"packs": ["pii_redaction"], "steps": [_tool("pay", approval={})]})
    with client.worker():
        _until(lambda: _status(client, handle.run_id, "pay") == "waiting_approval")
        handle.deny("pay", "customer ann@example.com asked to stop", actor="hal")
        assert handle.wait(20).status == "failed"
    stored = [r.envelope for r in client.store.iter_outbox()] + [d.reason for d in client.store.get_decisions(
        handle.run_id)] + [str(s.output) for s in client.store.get_steps(handle.run_id)]
    assert not any("ann@example.com" in text for text in stored)
    assert any("[REDACTED:email]" in text for text in stored)
