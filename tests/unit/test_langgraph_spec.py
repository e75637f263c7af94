"""Graph agent steps at submit: the shape of their inputs, references, the entrypoint check; and the core
install never importing LangGraph."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from fleetforge.adapters.executors.langgraph import check_entrypoint, graph_step_types
from fleetforge.core.policies.registry import default_packs, option_validators
from fleetforge.domain.errors import SpecError
from fleetforge.domain.spec import parse_spec


def _spec(**inputs: Any) -> dict[str, Any]:
    return {"inputs": {"order": "A-1"}, "steps": [{"id": "g", "type": "agent", "inputs": {
        "entrypoint": "json:dumps", **inputs}}]}


def _problems(spec: dict[str, Any], **kw: Any) -> list[str]:
    try:
        parse_spec(spec, packs=option_validators(default_packs()), **kw)
    except SpecError as exc:
        return exc.problems
    return []


def test_a_graph_step_needs_no_model_or_instructions_and_may_reference_run_inputs() -> None:
    assert _problems(_spec(initial_state={"messages": [{"role": "user", "content": "${{ inputs.order }}"}]},
                           config={"recursion_limit": 5, "configurable": {"k": 1}}, output=["messages"])) == []


@pytest.mark.parametrize("inputs,where", [
    ({"entrypoint": "no colon"}, "inputs.entrypoint"),
    ({"entrypoint": "a.b:"}, "inputs.entrypoint"),
    ({"initial_state": [1]}, "inputs.initial_state"),
    ({"config": {"recursion_limit": 0}}, "inputs.config.recursion_limit"),
    ({"config": {"thread_id": "x"}}, "inputs.config"),
    ({"config": {"configurable": 3}}, "inputs.config.configurable"),
    ({"output": [""]}, "inputs.output"),
    ({"model": ""}, "inputs.model"),
])
def test_bad_graph_inputs_are_named(inputs: dict[str, Any], where: str) -> None:
    problems = _problems(_spec(**inputs))
    assert len(problems) == 1 and problems[0].startswith(f"steps[0].{where}:"), problems


def test_the_entrypoint_must_import_where_the_spec_is_validated() -> None:
    assert check_entrypoint("json:dumps") is None
    assert "no attribute 'nope'" in (check_entrypoint("json:nope") or "")
    assert "not found" in (check_entrypoint("surely_absent_module_x:f") or "")
    assert "expected a callable" in (check_entrypoint("json.decoder:NaN") or "")
    problems = _problems(_spec(entrypoint="surely_absent_module_x:make"), step_types=graph_step_types())
    assert problems and "steps[0].inputs.entrypoint" in problems[0] and "surely_absent_module_x" in problems[0]
    assert _problems(_spec(entrypoint="surely_absent_module_x:make")) == []  # the pure check: shape only


def test_the_core_install_does_not_import_langgraph() -> None:
    code = ("import sys, fleetforge.adapters.cli.main, fleetforge.adapters.executors.build;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langgraph', 'langchain_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
