"""@fleetforge.tool: JSON Schemas from signatures and docstrings, argument validation, registration."""

from __future__ import annotations

import asyncio
import enum
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pytest

import fleetforge
from fleetforge.adapters.cli.toolplugins import load_tool_plugins
from fleetforge.adapters.executors.pytools import FunctionTool, register_tools, tool
from fleetforge.adapters.executors.tools import ToolError, ToolExecutor, ToolRegistry
from fleetforge.adapters.executors.toolschema import parse_docstring, schema_for, signature_schema, validate_args
from fleetforge.domain.models import ErrorKind, StepSpec, StepType
from fleetforge.ports.executor import ExecutionContext, StepFailure


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize(("annotation", "expected"), [
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (bool, {"type": "boolean"}),
    (type(None), {"type": "null"}),
    (Any, {}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (list, {"type": "array"}),
    (tuple[str, ...], {"type": "array", "items": {"type": "string"}}),
    (tuple[str, int], {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                       "minItems": 2, "maxItems": 2}),
    (set[str], {"type": "array", "items": {"type": "string"}}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (dict, {"type": "object", "additionalProperties": True}),
    (dict[str, Any], {"type": "object", "additionalProperties": True}),
    (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045 - the spelling under test
    (int | None, {"type": ["integer", "null"]}),
    (int | str, {"type": ["integer", "string"]}),
    (list[str] | None, {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}),
    (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
    (Literal[1, 2], {"enum": [1, 2], "type": "integer"}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Color, {"enum": ["red", "blue"], "type": "string"}),
    (Annotated[int, "how many"], {"type": "integer", "description": "how many"}),
    (list[dict[str, int]], {"type": "array", "items": {"type": "object",
                                                       "additionalProperties": {"type": "integer"}}}),
])
def test_schema_of_each_annotation(annotation: Any, expected: dict[str, Any]) -> None:
    assert schema_for(annotation, "p") == expected


@pytest.mark.parametrize("annotation", [dict[int, str], bytes, complex, object.__class__])
def test_annotations_without_a_json_schema_are_refused_naming_the_parameter(annotation: Any) -> None:
    with pytest.raises(TypeError, match="parameter 'x'"):
        schema_for(annotation, "parameter 'x'")


def lookup(customer_id: str, k: int = 3, mode: Literal["fast", "slow"] = "fast",
           tags: list[str] | None = None, weight: Optional[float] = None) -> dict[str, Any]:  # noqa: UP045
    """Look a customer up in the CRM.

    Second paragraph, not part of the description.

    Args:
        customer_id: The customer's id,
            as printed on the invoice.
        k (int): How many records.
        mode: Lookup mode.

    Returns:
        The record.
    """
    return {"id": customer_id, "k": k, "mode": mode, "tags": tags, "weight": weight}


def test_signature_schema_with_defaults_optional_literal_and_docstring() -> None:
    description, params = signature_schema(lookup)
    assert description == "Look a customer up in the CRM."
    assert params == {
        "type": "object",
        "properties": {
            "customer_id": {"type": "string", "description": "The customer's id, as printed on the invoice."},
            "k": {"type": "integer", "description": "How many records.", "default": 3},
            "mode": {"enum": ["fast", "slow"], "type": "string", "description": "Lookup mode.", "default": "fast"},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None},
            "weight": {"type": ["number", "null"], "default": None},
        },
        "required": ["customer_id"],
        "additionalProperties": False,
    }


def test_kwargs_allow_extra_arguments_and_positional_only_is_refused() -> None:
    def extra(a: int, **rest: Any) -> None:
        """Extra."""

    assert signature_schema(extra)[1]["additionalProperties"] is True

    def positional(a: int, /) -> None: ...

    with pytest.raises(TypeError, match="'a' is positional-only"):
        signature_schema(positional)

    def star(*a: int) -> None: ...

    with pytest.raises(TypeError, match="'a' is variadic positional"):
        signature_schema(star)


def test_unannotated_parameters_take_any_value_and_string_annotations_resolve() -> None:
    def f(a, b: list[int]) -> None:  # type: ignore[no-untyped-def]
        ...

    _, params = signature_schema(f)
    assert params["properties"] == {"a": {}, "b": {"type": "array", "items": {"type": "integer"}}}


@pytest.mark.parametrize(("doc", "description", "params"), [
    (None, "", {}),
    ("One line.", "One line.", {}),
    ("Two\nlines.\n\nMore.", "Two lines.", {}),
    ("Do it.\n\nArgs:\n    x: the x.\n    y (str): the y\n        wrapped.\nRaises:\n    ValueError: no.",
     "Do it.", {"x": "the x.", "y": "the y wrapped."}),
    ("Do it.\n\nParameters:\n    *args: ignored\n    **kw: extra.", "Do it.", {"args": "ignored", "kw": "extra."}),
    ("Args:\n    x: first.", "", {"x": "first."}),
])
def test_parse_docstring(doc: str | None, description: str, params: dict[str, str]) -> None:
    assert parse_docstring(doc) == (description, params)


@pytest.mark.parametrize(("args", "problems"), [
    ({"customer_id": "c1"}, []),
    ({"customer_id": "c1", "k": 5, "mode": "slow", "tags": ["a"], "weight": 2}, []),
    ({"customer_id": "c1", "tags": None, "weight": None}, []),
    ({}, ["argument 'customer_id': missing, expected a string"]),
    ({"customer_id": 7}, ["argument 'customer_id': got 7, expected a string"]),
    ({"customer_id": "c", "k": "3"}, ["argument 'k': got '3', expected an integer"]),
    ({"customer_id": "c", "k": 2.5}, ["argument 'k': got 2.5, expected an integer"]),
    ({"customer_id": "c", "k": True}, ["argument 'k': got true, expected an integer"]),
    ({"customer_id": "c", "mode": "medium"}, ["argument 'mode': got 'medium', expected one of 'fast', 'slow'"]),
    ({"customer_id": "c", "tags": ["a", 2]}, ["argument 'tags'[1]: got 2, expected a string"]),
    ({"customer_id": "c", "tags": "a"}, ["argument 'tags': got 'a', expected an array (items: a string) or null"]),
    ({"customer_id": "c", "weight": "heavy"}, ["argument 'weight': got 'heavy', expected a number or null"]),
    ({"customer_id": "c", "color": "red"},
     ["argument 'color': unexpected, expected one of: customer_id, k, mode, tags, weight"]),
])
def test_validate_args_names_each_bad_argument(args: dict[str, Any], problems: list[str]) -> None:
    assert validate_args(signature_schema(lookup)[1], args) == problems


def test_nested_dicts_and_tuples_are_checked() -> None:
    def f(scores: dict[str, int], pair: tuple[str, int]) -> None: ...

    schema = signature_schema(f)[1]
    assert validate_args(schema, {"scores": {"a": 1}, "pair": ["x", 1]}) == []
    assert validate_args(schema, {"scores": {"a": "1"}, "pair": ["x"]}) == [
        "argument 'scores'['a']: got '1', expected an integer", "argument 'pair': got 1 items, expected 2"]


def run(executor: ToolExecutor, name: str, args: Any) -> Any:
    step = StepSpec(id="s", type=StepType.TOOL, inputs={"tool": name, "args": args})
    ctx = ExecutionContext(run_id="r", step=step, attempt=1, seed=1, inputs=step.inputs, deadline_s=5.0,
                           workspace="w", app="a")
    return asyncio.run(executor.execute(ctx))


@dataclass
class Point:
    x: int
    y: int


def test_decorated_sync_and_async_tools_run_in_the_executor_with_validated_arguments() -> None:
    @fleetforge.tool
    def add(a: int, b: int = 1) -> int:
        """Add two integers."""
        return a + b

    @fleetforge.tool(name="shout", timeout_s=2.0, provider="acme")
    async def loud(text: str) -> dict[str, str]:
        """Upper-case a text."""
        return {"text": text.upper()}

    @tool
    def point(x: int) -> Point:
        return Point(x, -x)

    assert isinstance(add, FunctionTool) and add(2, b=3) == 5  # still callable as a function
    assert asyncio.run(loud("x")) == {"text": "X"}
    registry = register_tools(ToolRegistry(), [add, loud, point])
    executor = ToolExecutor(registry)
    assert run(executor, "add", {"a": 2}).output == {"result": 3}
    result = run(executor, "shout", {"text": "hi"})
    assert result.output == {"text": "HI"} and result.provider == "acme"
    assert run(executor, "point", {"x": 4}).output == {"x": 4, "y": -4}
    for name, args, message in [("add", {"a": "2"}, "argument 'a': got '2', expected an integer"),
                                ("add", {}, "argument 'a': missing"),
                                ("shout", {"text": "x", "loud": True}, "argument 'loud': unexpected")]:
        with pytest.raises(StepFailure) as failure:
            run(executor, name, args)
        assert failure.value.kind is ErrorKind.VALIDATION and not failure.value.kind.retriable
        assert message in str(failure.value)
    assert registry.get("shout") is not None and registry.get("shout").timeout_s == 2.0  # type: ignore[union-attr]


def test_registry_schema_accessor() -> None:
    registry = ToolRegistry()
    tool(lookup).register(registry)
    registry.register("plain", lambda args: args)
    schema = registry.schema("lookup")
    assert schema is not None and schema["name"] == "lookup"
    assert schema["description"] == "Look a customer up in the CRM."
    assert schema["parameters"]["required"] == ["customer_id"]
    assert registry.schema("plain") == {"name": "plain", "description": "", "parameters": {"type": "object"}}
    assert registry.schema("missing") is None
    registry.register("declared", lambda args: args, parameters={"type": "object", "properties": {}},
                      description="Declared by hand.")
    assert registry.schema("declared") == {"name": "declared", "description": "Declared by hand.",
                                           "parameters": {"type": "object", "properties": {}}}


def test_a_tool_raising_tool_error_keeps_its_kind() -> None:
    @tool
    def flaky(n: int) -> dict[str, int]:
        raise ToolError(ErrorKind.RATE_LIMITED, "slow down", retry_after_s=1.0)

    with pytest.raises(StepFailure) as failure:
        run(ToolExecutor(register_tools(ToolRegistry(), [flaky])), "flaky", {"n": 1})
    assert failure.value.kind is ErrorKind.RATE_LIMITED


def test_worker_tools_option_accepts_decorated_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "decorated_tools_mod.py").write_text(textwrap.dedent('''
        import fleetforge

        @fleetforge.tool
        def greet(name: str) -> str:
            """Say hello."""
            return f"hello {name}"

        def register(registry):
            registry.register("plain", lambda args: {"ok": True})
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ToolRegistry()
    assert load_tool_plugins(["decorated_tools_mod:greet,decorated_tools_mod:register"], registry) == [
        "decorated_tools_mod:greet", "decorated_tools_mod:register"]
    assert registry.names() == ["greet", "plain"]
    assert registry.schema("greet") == {"name": "greet", "description": "Say hello.", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
        "additionalProperties": False}}
    assert run(ToolExecutor(registry), "greet", {"name": "Ada"}).output == {"result": "hello Ada"}


def test_import_fleetforge_stays_light() -> None:
    code = ("import sys, fleetforge; heavy = [m for m in ('fleetforge.adapters', 'httpx', 'psycopg', 'typer') "
            "if m in sys.modules]; print(heavy); assert fleetforge.tool and fleetforge.Client")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fleetforge.nope  # noqa: B018
