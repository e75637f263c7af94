"""`@fleetforge.tool`: a typed Python function (sync or async) as a tool with a JSON Schema.

The schema comes from the signature and the docstring (see toolschema). Arguments are validated
before the function is called: a bad call fails with ErrorKind.VALIDATION (not retried) and a message
naming the argument, which an agent's model sees as the tool's error. A result that is not a dict is
returned as ``{"result": value}``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, overload

from fleetforge.adapters.executors.tools import ToolError, ToolRegistry
from fleetforge.adapters.executors.toolschema import signature_schema, validate_args
from fleetforge.domain.models import ErrorKind

__all__ = ["FunctionTool", "register_tools", "tool"]


class FunctionTool:
    """A decorated function: still callable as before, plus a name, description and parameter schema."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None, provider: str = "python") -> None:
        doc, parameters = signature_schema(fn)
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description if description is not None else doc
        self.parameters = parameters
        self.timeout_s = timeout_s
        self.provider = provider
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<fleetforge tool {self.name!r}>"

    def check(self, args: dict[str, Any]) -> None:
        """Raise ToolError(validation) naming every bad argument."""
        problems = validate_args(self.parameters, args)
        if problems:
            raise ToolError(ErrorKind.VALIDATION, "invalid arguments: " + "; ".join(problems))

    def invoke(self, args: dict[str, Any]) -> dict[str, Any]:
        """Validate `args`, call the (sync) function by name and shape its result."""
        self.check(args)
        return _as_output(self.fn(**args))

    async def ainvoke(self, args: dict[str, Any]) -> dict[str, Any]:
        """Validate `args`, await the (async) function called by name and shape its result."""
        self.check(args)
        return _as_output(await self.fn(**args))

    def register(self, registry: ToolRegistry) -> None:
        """Add this tool to `registry` with its schema and description."""
        registry.register(self.name, self.ainvoke if self.is_async else self.invoke, timeout_s=self.timeout_s,
                          provider=self.provider, parameters=self.parameters, description=self.description)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(*, name: str | None = None, description: str | None = None, timeout_s: float | None = None,
         provider: str = "python") -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None,
         timeout_s: float | None = None, provider: str = "python",
         ) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make `fn` a tool: ``@tool`` or ``@tool(name=..., timeout_s=...)``.

    Raises TypeError naming the parameter when an annotation has no JSON Schema equivalent.
    """
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s: got {timeout_s}, expected > 0 or None")

    def make(func: Callable[..., Any]) -> FunctionTool:
        if isinstance(func, FunctionTool):
            func = func.fn
        return FunctionTool(func, name=name, description=description, timeout_s=timeout_s, provider=provider)

    return make if fn is None else make(fn)


def register_tools(registry: ToolRegistry, tools: list[Any] | tuple[Any, ...]) -> ToolRegistry:
    """Register each tool: a FunctionTool as it is, a plain typed function as if decorated with @tool."""
    for item in tools:
        (item if isinstance(item, FunctionTool) else tool(item)).register(registry)
    return registry


def _as_output(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic models, without importing pydantic
    if callable(dump):
        dumped = dump(mode="json")
        if isinstance(dumped, dict):
            return dumped
    return {"result": value}
