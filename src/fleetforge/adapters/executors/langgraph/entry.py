"""Graph entrypoints (`package.module:callable`): loading them, and checking them at submit."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from fleetforge.domain.models import StepType
from fleetforge.domain.steptypes import GRAPH_ENTRYPOINT, STEP_TYPES, InputCheck, StepTypeSpec

__all__ = ["check_entrypoint", "graph_step_types", "load_entrypoint"]


def load_entrypoint(text: str) -> Callable[..., Any]:
    """The callable `text` names; ValueError saying what is missing otherwise."""
    module_name, _, attr = text.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        hint = " (pip install 'fleetforge[langgraph]')" if missing.split(".")[0] in ("langgraph", "langchain_core",
                                                                                    "langchain_openai") else \
            " (is its folder on PYTHONPATH of the submitting process and of the workers?)"
        raise ValueError(f"cannot import {module_name!r}: module {missing!r} not found{hint}") from None
    except Exception as exc:  # the user's module failed while importing
        raise ValueError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"[:400]) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{text!r} is a {type(target).__name__}, expected a callable returning a graph")
    return target  # type: ignore[no-any-return]


def check_entrypoint(text: str) -> str | None:
    """Why `text` cannot be loaded here, or None when it can."""
    try:
        load_entrypoint(text)
    except ValueError as exc:
        return str(exc)
    return None


def _graph_agent(base: Callable[[InputCheck, dict[str, Any], str], None]) -> Callable[
        [InputCheck, dict[str, Any], str], None]:
    def validate(check: InputCheck, inputs: dict[str, Any], path: str) -> None:
        before = len(check.problems)
        base(check, inputs, path)
        entry = inputs.get(GRAPH_ENTRYPOINT)
        if isinstance(entry, str) and len(check.problems) == before:
            problem = check_entrypoint(entry)
            if problem is not None:
                check.bad(f"{path}.{GRAPH_ENTRYPOINT}", entry, f"an importable callable: {problem}")
    return validate


def graph_step_types(registry: Mapping[str, StepTypeSpec] = STEP_TYPES) -> Mapping[str, StepTypeSpec]:
    """`registry` whose agent check also imports a graph step's entrypoint (submit-time validation)."""
    agent = registry[StepType.AGENT]
    return MappingProxyType({**registry, StepType.AGENT: replace(agent, validate=_graph_agent(agent.validate))})
