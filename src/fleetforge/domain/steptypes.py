"""The step-type registry: each step type declares how its inputs are validated and its span kind.

Adding a step type is one module (its executor, in `adapters/executors/`, with a validator here or
beside it) plus one entry: a `StepTypeSpec` in `STEP_TYPES` (or in the registry handed to
`parse_spec(step_types=...)`). `domain/spec.py` validates a step's inputs with its type's
`validate`; the span model reads `step_type_spec(name).span_kind`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from fleetforge.domain.models import StepType

__all__ = [
    "AGENT_DEFAULT_MAX_TURNS",
    "AGENT_MAX_TURNS",
    "GRAPH_ENTRYPOINT",
    "HTTP_METHODS",
    "STEP_TYPES",
    "TOOL_CHOICES",
    "InputCheck",
    "StepTypeSpec",
    "canonical",
    "step_type_spec",
]

HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


class InputCheck(Protocol):
    """What a validator may use of the spec checker: it records problems, never raises."""

    problems: list[str]

    def bad(self, path: str, value: object, expected: str) -> None: ...

    def missing(self, path: str, expected: str) -> None: ...

    def text(self, m: dict[str, Any], key: str, path: str, expected: str, nonempty: bool = True) -> None: ...


@dataclass(frozen=True, slots=True)
class StepTypeSpec:
    """One step type: its name, the span kind of its attempts (run | llm | tool | http) and its input check."""

    name: str
    span_kind: str
    validate: Callable[[InputCheck, dict[str, Any], str], None]


def _llm(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
    if "prompt" in inputs and "messages" in inputs:
        check.problems.append(f"{path}: got both prompt and messages, expected exactly one of them")
    elif "messages" in inputs:
        _messages(check, inputs["messages"], f"{path}.messages")
    else:
        check.text(inputs, "prompt", path, "a string (or inputs.messages: a list of {role, content})", nonempty=False)


def _messages(check: InputCheck, value: object, path: str) -> None:
    if not isinstance(value, list) or not value:
        check.bad(path, value, "a non-empty list of {role, content} mappings")
        return
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            check.bad(f"{path}[{index}]", item, "a mapping with role and content")
            continue
        check.text(item, "role", f"{path}[{index}]", "a non-empty string such as 'user'")
        check.text(item, "content", f"{path}[{index}]", "a string", nonempty=False)


def _tool(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
    check.text(inputs, "tool", path, "a tool name (a non-empty string)")


def _http(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
    expected = "an http:// or https:// URL with a host"
    url = inputs.get("url")
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if "url" not in inputs:
        check.missing(f"{path}.url", expected)
    elif parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        check.bad(f"{path}.url", url, expected)
    if "method" in inputs and inputs["method"] not in HTTP_METHODS:
        check.bad(f"{path}.method", inputs["method"], f"one of {', '.join(HTTP_METHODS)}")


AGENT_DEFAULT_MAX_TURNS: Final = 8
AGENT_MAX_TURNS: Final = 100
TOOL_CHOICES: Final = ("auto", "none", "required")


GRAPH_ENTRYPOINT: Final = "entrypoint"
"""The agent input that makes it a graph step: `module:callable` returning a LangGraph graph."""
GRAPH_MAX_RECURSION: Final = 10_000
_ENTRY: Final = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def _graph(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
    """A graph agent: `entrypoint`, `initial_state`, optional `config`, `output` and `model`."""
    entry = inputs[GRAPH_ENTRYPOINT]
    if not isinstance(entry, str) or not _ENTRY.fullmatch(entry):
        check.bad(f"{path}.{GRAPH_ENTRYPOINT}", entry, "'package.module:callable' returning a LangGraph graph")
    if not isinstance(inputs.get("initial_state", {}), dict):
        check.bad(f"{path}.initial_state", inputs["initial_state"], "a mapping (the graph's input state)")
    config = inputs.get("config", {})
    if not isinstance(config, dict) or set(config) - {"recursion_limit", "configurable"}:
        check.bad(f"{path}.config", config, "a mapping with recursion_limit and/or configurable")
    else:
        limit = config.get("recursion_limit", 25)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= GRAPH_MAX_RECURSION:
            check.bad(f"{path}.config.recursion_limit", limit, f"an integer from 1 to {GRAPH_MAX_RECURSION}")
        if not isinstance(config.get("configurable", {}), dict):
            check.bad(f"{path}.config.configurable", config["configurable"], "a mapping")
    output = inputs.get("output", [])
    keys = [output] if isinstance(output, str) else output
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        check.bad(f"{path}.output", output, "a state key or a list of state keys (default: the whole state)")
    if "model" in inputs:
        check.text(inputs, "model", path, "a model name (a non-empty string)")


def _agent(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
    if GRAPH_ENTRYPOINT in inputs:
        _graph(check, inputs, path)
        return
    check.text(inputs, "model", path, "a model name (a non-empty string)")
    if "instructions" not in inputs and "messages" not in inputs:
        check.missing(f"{path}.instructions", "a string (and/or inputs.messages: a list of {role, content})")
    if "instructions" in inputs:
        check.text(inputs, "instructions", path, "a non-empty string")
    if "messages" in inputs:
        _messages(check, inputs["messages"], f"{path}.messages")
    tools = inputs.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools) \
            or len(set(tools)) != len(tools):
        check.bad(f"{path}.tools", tools, "a list of distinct registered tool names")
    turns = inputs.get("max_turns", AGENT_DEFAULT_MAX_TURNS)
    if isinstance(turns, bool) or not isinstance(turns, int) or not 1 <= turns <= AGENT_MAX_TURNS:
        check.bad(f"{path}.max_turns", turns, f"an integer from 1 to {AGENT_MAX_TURNS}")
    choice = inputs.get("tool_choice", "auto")
    named = isinstance(choice, dict) and choice.get("type") == "function" \
        and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str)
    if choice not in TOOL_CHOICES and not named:
        check.bad(f"{path}.tool_choice", choice,
                  f"one of {', '.join(TOOL_CHOICES)} or {{type: function, function: {{name}}}}")
    if not isinstance(inputs.get("parallel_tool_calls", True), bool):
        check.bad(f"{path}.parallel_tool_calls", inputs["parallel_tool_calls"], "true or false")


STEP_TYPES: Final[Mapping[str, StepTypeSpec]] = MappingProxyType({
    StepType.LLM: StepTypeSpec(StepType.LLM, "llm", _llm),
    StepType.TOOL: StepTypeSpec(StepType.TOOL, "tool", _tool),
    StepType.HTTP: StepTypeSpec(StepType.HTTP, "http", _http),
    StepType.AGENT: StepTypeSpec(StepType.AGENT, "agent", _agent),
})


def step_type_spec(name: str, registry: Mapping[str, StepTypeSpec] = STEP_TYPES) -> StepTypeSpec:
    """The registered step type `name`; KeyError naming the known ones otherwise."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown step type {name!r}; known: {', '.join(registry)}") from None


def canonical(name: str) -> str:
    """`name` as the built-in `StepType` member when it is one (so `is StepType.X` holds), else as given."""
    return StepType(name) if name in StepType.__members__.values() else name
