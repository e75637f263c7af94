"""A step type is one module plus one registry entry: its input check and span kind come from the registry."""

from __future__ import annotations

from typing import Any

import pytest

from fleetforge.core.exporting import SpanKind
from fleetforge.domain.errors import SpecError
from fleetforge.domain.models import StepType
from fleetforge.domain.spec import parse_spec, spec_to_dict
from fleetforge.domain.steptypes import STEP_TYPES, InputCheck, StepTypeSpec, step_type_spec

PACKS: dict[str, Any] = {}


# -- the "new module": an echo step type's input check -------------------------------------------
def _echo_inputs(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
    check.text(inputs, "say", path, "the text to echo (a non-empty string)")


# -- the one registry line ------------------------------------------------------------------------
REGISTRY = {**STEP_TYPES, "echo": StepTypeSpec("echo", "tool", _echo_inputs)}


def test_a_registered_step_type_is_accepted_and_round_trips() -> None:
    data = {"steps": [{"id": "a", "type": "echo", "inputs": {"say": "hi"}},
                      {"id": "b", "type": "llm", "inputs": {"prompt": "x"}, "depends_on": ["a"]}]}
    spec = parse_spec(data, packs=PACKS, step_types=REGISTRY)
    assert [s.type for s in spec.steps] == ["echo", StepType.LLM]
    assert spec.steps[1].type is StepType.LLM
    assert spec_to_dict(spec)["steps"][0]["type"] == "echo"
    assert step_type_spec("echo", REGISTRY).span_kind == SpanKind.TOOL


def test_the_new_type_validates_its_own_inputs() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"steps": [{"id": "a", "type": "echo", "inputs": {"say": ""}}]}, packs=PACKS, step_types=REGISTRY)
    assert info.value.problems == ["steps[0].inputs.say: got '', expected the text to echo (a non-empty string)"]


def test_without_its_entry_the_type_is_unknown_and_the_message_lists_the_registry() -> None:
    with pytest.raises(SpecError, match=r"steps\[0\]\.type: got 'echo', expected one of llm, tool, http"):
        parse_spec({"steps": [{"id": "a", "type": "echo", "inputs": {"say": "hi"}}]}, packs=PACKS)
    with pytest.raises(KeyError, match="known: llm, tool, http"):
        step_type_spec("echo")


def test_built_in_types_declare_their_span_kinds() -> None:
    assert {name: step_type_spec(name).span_kind for name in STEP_TYPES} == {"llm": "llm", "tool": "tool",
                                                                             "http": "http", "agent": "agent"}
    assert set(STEP_TYPES) == set(StepType)
