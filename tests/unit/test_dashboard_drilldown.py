"""The dashboard's run drill-down data (adapters/views/dashboard/drilldown.py, core/transcript.py), on a real
SQLite store: values cut with their size, resolved and redacted inputs as stored, agent units grouped under
their agent, and the transcript equal to what the agent itself recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.views.dashboard.app import Dashboard
from fleetforge.adapters.views.dashboard.drilldown import PAYLOAD_BYTES, payload, run_view
from fleetforge.core.transcript import children_of, transcript
from fleetforge.domain.models import StepSpec, StepStatus
from tests.fakes import Harness, Ok, ScriptedExecutor, llm
from tests.unit.test_agent import agent_spec, make_runtime, run_all


@pytest.mark.parametrize("value", ["é" * 5000, {"k": "€" * 3000}, ["x" * 9000], "short", {"a": 1}])
def test_payload_is_cut_on_a_character_boundary_with_the_whole_size(value: Any) -> None:
    whole = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    got = payload(value)
    assert got["bytes"] == len(whole.encode())
    assert got["truncated"] == (got["bytes"] > PAYLOAD_BYTES)
    assert whole.startswith(got["text"]) and len(got["text"].encode()) <= PAYLOAD_BYTES
    if got["truncated"]:
        assert len(got["text"].encode()) > PAYLOAD_BYTES - 4  # at most one character dropped
    else:
        assert got["text"] == whole


def _agent_run(tmp_path: Path, **inputs: Any) -> tuple[Any, str]:
    rt, store, client = make_runtime(tmp_path / "s.db")
    spec = agent_spec(sim_parallel_calls=2, **inputs)
    spec["packs"] = [{"name": "tool_acl", "deny": ["weather"]}]
    rid = rt.submit(spec)
    run_all(rt, client)
    return store, rid


def test_transcript_equals_what_the_agent_recorded(tmp_path: Path) -> None:
    store, rid = _agent_run(tmp_path)
    steps = store.get_steps(rid)
    agent = next(s for s in steps if s.step_id == "support")
    out = agent.output
    tr = transcript(StepSpec("support", "agent", agent_spec()["steps"][0]["inputs"] | {"sim_parallel_calls": 2}),
                    children_of("support", steps))
    assert tr.final == out["text"] and tr.failure is None
    assert list(tr.prompt) == out["messages"][:1]
    assert len(tr.turns) == out["turns"]
    calls = [c for t in tr.turns for c in t.calls]
    assert [(c.name, c.arguments, c.step_id) for c in calls] == [
        (c["name"], c["arguments"], c["step"]) for c in out["tool_calls"]]
    assert [c.answer for c in calls] == [m["content"] for m in out["messages"] if m["role"] == "tool"]
    assert any("denied by tool_acl" in (c.answer or "") for c in calls)


def test_transcript_of_an_agent_still_running(tmp_path: Path) -> None:
    """Turn 2's first call still running, its second done: both listed, neither answered yet."""
    store, rid = _agent_run(tmp_path)
    rows = store.get_steps(rid)
    kept = {r.step_id: r for r in rows if r.step_id.startswith(("support.t1", "support.t2"))}
    running = next(sid for sid in sorted(kept) if sid.startswith("support.t2.c"))
    kept[running] = replace(kept[running], status=StepStatus.RUNNING, output=None)
    tr = transcript(StepSpec("support", "agent", agent_spec()["steps"][0]["inputs"] | {"sim_parallel_calls": 2}),
                    kept)
    assert tr.final is None and tr.failure is None
    assert [t.turn for t in tr.turns] == [1, 2]
    t2 = tr.turns[1].calls
    assert [c.step_id for c in t2] == sorted(sid for sid in kept if sid.startswith("support.t2.c"))
    assert [c.answer is None for c in t2] == [True, True]  # the model is answered once every call ended
    assert t2[0].row is not None and t2[0].row.status is StepStatus.RUNNING
    assert all(c.answer is not None for c in tr.turns[0].calls)


def test_inputs_as_written_until_claimed_then_resolved_and_redacted(tmp_path: Path) -> None:
    ex = ScriptedExecutor({"plan": [Ok({"text": "write to alice@example.com"})]})
    h = Harness(tmp_path / "s.db", executor=ex)
    rid = h.submit(llm("plan", "Plan it"),
                   llm("answer", "Use: ${{ steps.plan.output.text }}", "plan", policy={"packs": ["pii_redaction"]}))
    (claim,) = h.claim()
    h.finish(claim, Ok({"text": "write to alice@example.com"}))
    before = {s["step_id"]: s for s in run_view(h.store, rid)["steps"]}  # type: ignore[index]
    assert json.loads(before["answer"]["inputs"]["text"])["prompt"] == "Use: ${{ steps.plan.output.text }}"
    assert "resolve when the step is claimed" in before["answer"]["inputs_note"]
    assert before["plan"]["inputs_note"] == ""
    h.drain()
    after = {s["step_id"]: s for s in run_view(h.store, rid)["steps"]}  # type: ignore[index]
    answer = after["answer"]
    assert json.loads(answer["inputs"]["text"])["prompt"] == "Use: write to [REDACTED:email]"
    assert answer["inputs_note"] == "" and "alice@example.com" not in json.dumps(answer)
    assert json.loads(after["plan"]["output"]["text"]) == {"text": "write to alice@example.com"}


def test_transcript_of_an_agent_that_ran_out_of_turns(tmp_path: Path) -> None:
    store, rid = _agent_run(tmp_path, max_turns=2)
    view = run_view(store, rid)
    assert view is not None and view["status"] == "failed"
    (agent,) = view["steps"]
    tr = agent["transcript"]
    assert agent["status"] == "failed" and agent["error_kind"] == "max_turns"
    assert [t["turn"] for t in tr["turns"]] == [1, 2] and tr["final"] is None
    assert "max_turns=2" in tr["failure"]
    assert all(c["result"] is not None for t in tr["turns"] for c in t["calls"])


def test_dashboard_finds_a_run_by_a_unique_prefix(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    ids = [h.submit(llm("a", "hi")) for _ in range(17)]  # two of them share a first character
    dash = Dashboard(None, h.store)
    view = dash.run(ids[0][:13])
    assert view is not None and view["run_id"] == ids[0]
    assert dash.run("zzzz") is None
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    with pytest.raises(ValueError, match="type more characters"):
        dash.run(shared)
