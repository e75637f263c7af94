"""The operator parts of a spec (approval, compensation, breakpoints): each bad one is a clear submit error
with nothing stored, and good ones survive the canonical form."""

from __future__ import annotations

from typing import Any

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.runtime import Runtime
from fleetforge.domain.errors import SpecError
from fleetforge.domain.spec import parse_spec, spec_to_dict
from fleetforge.domain.stored_spec import parse_stored_spec
from tests.fakes import FakeClock

PACKS: dict[str, Any] = {"tool_acl": lambda o: []}


def _tool(sid: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "type": "tool", "depends_on": list(deps), "inputs": {"tool": "noop", "args": {}}, **extra}


def _agent(**extra: Any) -> dict[str, Any]:
    return {"id": "bot", "type": "agent", "inputs": {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}],
                                                     "tools": ["refund", "lookup"]}, **extra}


def _comp(step: str) -> dict[str, Any]:
    return {"execution": {"compensation": {"step": step}}}


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "approval-unknown-tool": ({"steps": [_agent(approval={"tools": ["refnd"]})]},
                              "steps[0].approval.tools[0]: got 'refnd', expected one of the agent's tools "
                              "(inputs.tools: refund, lookup)"),
    "approval-tools-on-a-tool-step": ({"steps": [_tool("a", approval={"tools": ["noop"]})]},
                                      "steps[0].approval.tools: got ['noop'], expected no tools on a step that is "
                                      "not an agent"),
    "approval-timeout-zero": ({"steps": [_tool("a", approval={"timeout_ms": 0})]},
                              "steps[0].approval.timeout_ms: got 0, expected an integer >= 1"),
    "approval-timeout-text": ({"steps": [_tool("a", approval={"timeout_ms": "10s"})]},
                              "steps[0].approval.timeout_ms: got '10s', expected an integer from 1 to"),
    "approval-timeout-too-long": ({"steps": [_tool("a", approval={"timeout_ms": 31 * 86_400_000})]},
                                  "steps[0].approval.timeout_ms: got 2678400000, expected an integer <= 2592000000"),
    "approval-unknown-key": ({"steps": [_tool("a", approval={"timeout": 5})]},
                             "steps[0].approval.timeout: unknown key, expected one of timeout_ms, tools"),
    "approval-not-a-mapping": ({"steps": [_tool("a", approval=True)]},
                               "steps[0].approval: got True, expected a mapping"),
    "compensation-missing-step": ({"steps": [_tool("a", **_comp("undo"))]},
                                  "steps[0].execution.compensation.step: got 'undo', expected the id of a step of "
                                  "the run (known: a)"),
    "compensation-self": ({"steps": [_tool("a", **_comp("a"))]},
                          "steps[0].execution.compensation.step: got 'a', expected another step (a step cannot "
                          "compensate itself)"),
    "compensation-ancestor": ({"steps": [_tool("a"), _tool("b", "a", **_comp("a"))]},
                              "steps[1].execution.compensation.step: got 'a', expected a step that is not an "
                              "ancestor of 'b'"),
    "compensation-depends-elsewhere": ({"steps": [_tool("a"), _tool("x"), _tool("b", "a", **_comp("undo")),
                                                  _tool("undo", "x")]},
                                       "expected a step whose depends_on are only 'b' or its ancestors"),
    "compensation-depended-on": ({"steps": [_tool("a", **_comp("undo")), _tool("undo"), _tool("z", "undo")]},
                                 "steps[2].depends_on: got 'undo', expected a step that is not a compensation step"),
    "compensation-shape": ({"steps": [_tool("a", execution={"compensation": "undo"}), _tool("undo")]},
                           "steps[0].execution.compensation: got 'undo', expected a mapping {step: ID}"),
    "error-ref-outside-compensation": ({"steps": [_tool("a"), {**_tool("b", "a"), "inputs": {
        "tool": "noop", "args": {"why": "${{ steps.a.error.message }}"}}}]},
                                       "expected steps.ID.error only in the inputs of the step ID names in "
                                       "execution.compensation"),
    "error-ref-bad-field": ({"steps": [_tool("a", **_comp("undo")), {**_tool("undo"), "inputs": {
        "tool": "noop", "args": {"why": "${{ steps.a.error.text }}"}}}]},
                            "expected steps.a.error followed by nothing, .kind or .message"),
    "breakpoint-unknown": ({"breakpoints": ["zz"], "steps": [_tool("a")]},
                           "breakpoints[0]: got 'zz', expected a step id of the run (known: a)"),
    "breakpoint-twice": ({"breakpoints": ["a", "a"], "steps": [_tool("a")]},
                         "breakpoints[1]: got 'a', expected each step id once"),
    "breakpoints-not-a-list": ({"breakpoints": "a", "steps": [_tool("a")]},
                               "breakpoints: got 'a', expected a list of step ids"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_operator_spec_is_a_clear_error_and_nothing_is_stored(name: str, tmp_path: Any) -> None:
    data, expected = BAD[name]
    store = SqliteStore(tmp_path / "s.db", clock=FakeClock())
    store.migrate()
    rt = Runtime(store, executors={}, packs=default_packs(), clock=FakeClock())
    with pytest.raises(SpecError) as caught:
        rt.submit(data)
    assert any(expected in p for p in caught.value.problems), caught.value.problems
    assert store.list_runs() == [] and list(store.iter_outbox()) == []
    store.close()


def test_operator_parts_survive_the_canonical_form() -> None:
    data = {"breakpoints": ["b"], "steps": [
        _agent(approval={"tools": ["refund"], "timeout_ms": 5000}),
        _tool("b", approval={}, **_comp("undo")),
        {**_tool("undo"), "inputs": {"tool": "noop", "args": {"why": "${{ steps.b.error.message }}"}}}]}
    spec = parse_spec(data, packs=PACKS)
    assert spec.breakpoints == ("b",)
    assert spec.steps[0].approval is not None and spec.steps[0].approval.tools == ("refund",)
    assert spec.steps[0].approval.timeout_ms == 5000
    assert spec.steps[1].approval is not None and spec.steps[1].approval.timeout_ms is None
    assert spec.steps[1].execution.compensation == "undo"
    canonical = spec_to_dict(spec)
    assert parse_spec(canonical, packs=PACKS) == spec
    assert parse_stored_spec(canonical, packs=PACKS) == spec
