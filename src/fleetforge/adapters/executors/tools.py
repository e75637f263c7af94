"""The `tool` step executor: a registry of Python callables, and deterministic demo tools."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import json
import math
import operator
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

from fleetforge.domain.jsontext import plain
from fleetforge.domain.models import ErrorKind, StepSpec
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure, Usage

__all__ = [
    "CONTEXT_KEYS",
    "Tool",
    "ToolError",
    "ToolExecutor",
    "ToolFn",
    "ToolRegistry",
    "register_demo_tools",
    "safe_eval",
]

ToolFn = Callable[[dict[str, Any]], dict[str, Any]] | Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
F = TypeVar("F", bound=ToolFn)

CONTEXT_KEYS: Final = ("_seed", "_attempt", "_step")  # added to args for tools with wants_context


class ToolError(Exception):
    """Raised by a tool to fail its step with a given kind (e.g. rate_limited)."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Tool:
    """A registered tool: its callable, default timeout (None: the step deadline) and provider label.

    `inline`: a sync tool that returns in microseconds and cannot hang (pure computation) is called on
    the event loop instead of a worker thread; a result that comes later than the timeout is still
    a timeout.
    """

    name: str
    fn: ToolFn
    timeout_s: float | None = None
    provider: str = "python"
    wants_context: bool = False
    inline: bool = False
    parameters: dict[str, Any] | None = None  # JSON Schema of the args; None: {"type": "object"}
    description: str = ""

    def function(self) -> dict[str, Any]:
        """The tool as an OpenAI chat-completions `tools` item: {type: function, function: {...}}."""
        fn: dict[str, Any] = {"name": self.name, "parameters": self.parameters or {"type": "object"}}
        if self.description:
            fn["description"] = self.description
        return {"type": "function", "function": fn}


class ToolRegistry:
    """Tool names to callables taking an args dict and returning a JSON-able dict (sync or async)."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    @overload
    def register(
        self,
        name: str,
        fn: F,
        *,
        timeout_s: float | None = ...,
        provider: str = ...,
        wants_context: bool = ...,
        inline: bool = ...,
        parameters: dict[str, Any] | None = ...,
        description: str = ...,
    ) -> F: ...

    @overload
    def register(
        self,
        name: str,
        fn: None = ...,
        *,
        timeout_s: float | None = ...,
        provider: str = ...,
        wants_context: bool = ...,
        inline: bool = ...,
        parameters: dict[str, Any] | None = ...,
        description: str = ...,
    ) -> Callable[[F], F]: ...

    def register(
        self,
        name: str,
        fn: F | None = None,
        *,
        timeout_s: float | None = None,
        provider: str = "python",
        wants_context: bool = False,
        inline: bool = False,
        parameters: dict[str, Any] | None = None,
        description: str = "",
    ) -> F | Callable[[F], F]:
        """Register `fn` as `name` (replacing any previous one); without `fn`, a decorator.

        With ``wants_context=True`` the executor adds `_seed`, `_attempt` and `_step` to the args.
        ``inline=True`` (sync tools only) calls it on the event loop, without a thread: only for
        pure computations that return in microseconds, since a timeout cannot interrupt it there.
        `parameters` (a JSON Schema object, default ``{"type": "object"}``) and `description` are what
        an `agent` step's model is told about the tool.
        """
        if not name:
            raise ValueError("tool name must not be empty")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s: got {timeout_s}, expected > 0 or None")
        if parameters is not None and (not isinstance(parameters, dict) or parameters.get("type") != "object"):
            raise ValueError(f"parameters: got {parameters!r:.80}, expected a JSON Schema with type 'object'")

        def add(func: F) -> F:
            if inline and inspect.iscoroutinefunction(func):
                raise ValueError(f"tool {name}: inline=True is for sync functions, got a coroutine function")
            self._tools[name] = Tool(name, func, timeout_s, provider, wants_context, inline, parameters,
                                     description)
            return func

        return add if fn is None else add(fn)

    def get(self, name: str) -> Tool | None:
        """The tool registered as `name`, or None."""
        return self._tools.get(name)

    def schema(self, name: str) -> dict[str, Any] | None:
        """`{"name", "description", "parameters"}` of tool `name` (the function object of an OpenAI tool
        definition), None when no such tool; a tool without declared parameters accepts any object."""
        tool = self._tools.get(name)
        if tool is None:
            return None
        parameters = tool.parameters if tool.parameters is not None else {"type": "object"}
        return {"name": name, "description": tool.description, "parameters": parameters}

    def names(self) -> list[str]:
        """Registered tool names, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools


class ToolExecutor:
    """Runs `tool` steps: inputs `tool` (a registered name) and `args` (a dict).

    Sync tools run in a worker thread (which a timeout abandons, it cannot stop it), `inline` ones on
    the event loop (a result later than the timeout is a timeout). The timeout is the smaller of the
    tool's and ``ctx.deadline_s``. Failures: ToolError → its kind, ValueError/TypeError or an unknown
    tool or a non-JSON result → validation, timeout → timeout, anything else → crash.
    """

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """Tools use no tokens."""
        return 0, 0.0

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(tool name, its provider; "python" when unknown)."""
        name = step.inputs.get("tool")
        name = name if isinstance(name, str) else ""
        tool = self._registry.get(name)
        return name, tool.provider if tool else "python"

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        raw_name = ctx.inputs.get("tool")
        name = raw_name if isinstance(raw_name, str) else ""
        tool = self._registry.get(name)
        provider = tool.provider if tool else "python"

        def fail(kind: ErrorKind, message: str, retry_after_s: float | None = None) -> StepFailure:
            return StepFailure(kind, message, tool=name, provider=provider, retry_after_s=retry_after_s)

        if tool is None:
            known = ", ".join(self._registry.names()) or "none registered"
            raise fail(ErrorKind.VALIDATION, f"tool: got {name!r:.60}, expected one of: {known}")
        args = ctx.inputs.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise fail(ErrorKind.VALIDATION, f"args: got {type(args).__name__}, expected an object")
        args = dict(args)
        if tool.wants_context:
            args.update({"_seed": ctx.seed, "_attempt": ctx.attempt, "_step": ctx.step.id})
        timeout = ctx.deadline_s if tool.timeout_s is None else min(tool.timeout_s, ctx.deadline_s)
        if timeout <= 0:
            raise fail(ErrorKind.TIMEOUT, f"tool {name}: deadline already passed")
        started = time.perf_counter()
        try:
            if tool.inline:
                output = await _call_inline(tool.fn, args, started, timeout)
            else:
                async with asyncio.timeout(timeout):
                    output = await _call(tool.fn, args)
        except ToolError as exc:
            raise fail(exc.kind, f"tool {name}: {exc.message}", exc.retry_after_s) from None
        except TimeoutError:
            raise fail(ErrorKind.TIMEOUT, f"tool {name}: no result within {timeout:g}s") from None
        except (ValueError, TypeError) as exc:
            raise fail(ErrorKind.VALIDATION, f"tool {name}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:
            raise fail(ErrorKind.CRASH, f"tool {name}: {type(exc).__name__}: {exc}") from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        if not isinstance(output, dict):
            raise fail(
                ErrorKind.VALIDATION, f"tool {name}: returned {type(output).__name__}, expected a dict"
            )
        if not plain(output):  # plain JSON data always encodes; anything else is checked by encoding it
            try:
                json.dumps(output, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise fail(ErrorKind.VALIDATION, f"tool {name}: result is not JSON: {exc}") from None
        return ExecutionResult(
            output=output, usage=Usage(), tool=name, provider=provider, latency_ms=latency_ms
        )


async def _call_inline(fn: ToolFn, args: dict[str, Any], started: float, timeout: float) -> Any:
    """Call a sync tool here; a result that came after `timeout` raises TimeoutError, as the thread's
    would have been abandoned."""
    result: Any = fn(args)
    if inspect.isawaitable(result):
        async with asyncio.timeout(timeout - (time.perf_counter() - started)):
            return await result
    if time.perf_counter() - started > timeout:
        raise TimeoutError
    return result


async def _call(fn: ToolFn, args: dict[str, Any]) -> Any:
    """Call a coroutine function in the loop, anything else in a worker thread; await what it returns."""
    result: Any = fn(args) if inspect.iscoroutinefunction(fn) else await asyncio.to_thread(fn, args)
    if inspect.isawaitable(result):
        result = await result
    return result


# ---- demo tools -------------------------------------------------------------------------------

_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
MAX_EXPRESSION_CHARS: Final = 500
MAX_EXPONENT: Final = 1000
MAX_MAGNITUDE: Final = 1e100


def safe_eval(expression: str) -> float | int:
    """Evaluate + - * / // % ** and parentheses over numbers; ValueError on anything else. No eval()."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None

    def walk(node: ast.AST) -> float | int:
        value: float | int
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            value = node.value
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            value = _UNARY[type(node.op)](walk(node.operand))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ValueError("division by zero") from None
        else:
            raise ValueError(f"unsupported element: {type(node).__name__}")
        if (
            isinstance(value, complex)
            or abs(value) > MAX_MAGNITUDE
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise ValueError("result out of range")
        return value

    return walk(tree.body)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _maybe_fail(tool: str, args: dict[str, Any]) -> None:
    """Raise a ToolError with probability `fail_rate`, decided by (_seed, _step, _attempt)."""
    rate = args.get("fail_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"fail_rate: got {rate!r:.40}, expected a number in [0, 1]")
    rng = random.Random(
        int.from_bytes(_digest(tool, args.get("_seed"), args.get("_step"), args.get("_attempt"))[:8], "big")
    )
    failed = rng.random() < rate
    kind = rng.choice((ErrorKind.RATE_LIMITED, ErrorKind.HTTP_5XX, ErrorKind.TIMEOUT))
    retry_after = round(rng.uniform(0.05, 1.0), 3)
    if failed:
        raise ToolError(
            kind,
            f"injected {kind.value}",
            retry_after_s=retry_after if kind is ErrorKind.RATE_LIMITED else None,
        )


def _required_str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: got {value!r:.40}, expected a non-empty string")
    return value


def _noop(args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "args": {k: v for k, v in args.items() if not k.startswith("_")}}


def _search(args: dict[str, Any]) -> dict[str, Any]:
    query = _required_str(args, "query")
    k = args.get("k", 3)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 20:
        raise ValueError(f"k: got {k!r:.20}, expected an integer in [1, 20]")
    slug = "-".join(query.lower().split())[:60]
    results = []
    for i in range(k):
        tag = _digest(query, i).hex()[:8]
        results.append(
            {
                "title": f"{query.title()} — result {i + 1}",
                "url": f"https://example.com/{slug}/{tag}",
                "snippet": f"Everything about {query} ({tag}).",
                "score": round(1.0 / (i + 1), 4),
            }
        )
    return {"query": query, "results": results}


def _calculator(args: dict[str, Any]) -> dict[str, Any]:
    expression = _required_str(args, "expression")
    return {"expression": expression, "result": safe_eval(expression)}


def _weather(args: dict[str, Any]) -> dict[str, Any]:
    city = _required_str(args, "city")
    _maybe_fail("weather", args)
    d = _digest("weather", city.lower())
    conditions = ("sunny", "cloudy", "rain", "snow", "windy", "fog")
    return {
        "city": city,
        "temperature_c": round(d[0] / 255 * 45 - 10, 1),
        "conditions": conditions[d[1] % len(conditions)],
        "humidity_pct": d[2] % 101,
    }


def _crm_lookup(args: dict[str, Any]) -> dict[str, Any]:
    customer_id = args.get("customer_id")
    if not isinstance(customer_id, str | int) or isinstance(customer_id, bool) or customer_id == "":
        raise ValueError(f"customer_id: got {customer_id!r:.40}, expected a string or integer")
    _maybe_fail("crm_lookup", args)
    d = _digest("crm", customer_id)
    names = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Linus", "Margaret")
    tiers = ("free", "pro", "enterprise")
    return {
        "customer_id": str(customer_id),
        "name": f"{names[d[0] % len(names)]} {d[1] % 90 + 10}",
        "tier": tiers[d[2] % len(tiers)],
        "lifetime_value_usd": int.from_bytes(d[3:6], "big") % 100_000,
        "open_tickets": d[6] % 5,
    }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": sorted(properties)}


def register_demo_tools(registry: ToolRegistry) -> ToolRegistry:
    """Add the deterministic demo tools: noop, search, calculator, weather, crm_lookup.

    `weather` and `crm_lookup` fail with probability ``args["fail_rate"]`` (rate_limited,
    http_5xx or timeout), decided by the run seed, step id and attempt.
    """
    registry.register("noop", _noop, timeout_s=5.0, inline=True, description="Does nothing.")
    registry.register("search", _search, timeout_s=10.0, inline=True, description="Search the web.",
                      parameters=_object({"query": {"type": "string"}}))
    registry.register("calculator", _calculator, timeout_s=5.0, inline=True, description="Evaluate arithmetic.",
                      parameters=_object({"expression": {"type": "string", "enum": ["6*7", "2**10", "(1+2)/4"]}}))
    registry.register("weather", _weather, timeout_s=10.0, wants_context=True, inline=True,
                      description="Current weather in a city.", parameters=_object({"city": {"type": "string"}}))
    registry.register("crm_lookup", _crm_lookup, timeout_s=10.0, wants_context=True, inline=True,
                      description="Look a customer up in the CRM.",
                      parameters=_object({"customer_id": {"type": "string"}}))
    return registry
