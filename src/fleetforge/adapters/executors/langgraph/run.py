"""Running one attempt of a graph step: build the graph, govern its calls, checkpoint, resume.

- The entrypoint is called with `model=` (a `GovernedChatModel`) when it takes a `model` parameter.
- Every `ToolNode` of the compiled graph runs its calls through `govern_tool_call` (LangGraph's
  `awrap_tool_call` interception): each call is a held unit; a denied call is answered to the graph as
  a tool error message; a call recorded in an earlier attempt returns its recorded result.
- A callback handler (`raise_error`) refuses chat-model and tool calls that did not go through them, so
  no call of the graph escapes its budget and guardrails.
- Checkpoints: LangGraph's own savers on the store's database (checkpoints.py), thread
  `fleetforge:<run id>:<step id>`; each attempt resumes the thread from its last completed super-step
  (checkpoints written before the next one starts).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, ToolMessage, convert_to_openai_messages
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError
from langgraph.prebuilt import ToolNode
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from fleetforge.adapters.executors.langgraph.chat import GovernedChatModel, SimChatModel, classify
from fleetforge.adapters.executors.langgraph.checkpoints import checkpointer, thread_id
from fleetforge.adapters.executors.langgraph.entry import load_entrypoint
from fleetforge.adapters.executors.langgraph.executor import LangGraphExecutor
from fleetforge.adapters.executors.sim_llm import SimulatedLLM
from fleetforge.domain.models import ErrorKind
from fleetforge.domain.steptypes import GRAPH_ENTRYPOINT
from fleetforge.ports.executor import AgentUnits, ExecutionContext, ExecutionResult, StepFailure

__all__ = ["govern_tool_call", "run_graph"]

_PROVIDER = "langgraph"
_MODEL_KEYS = ("temperature", "max_tokens")
_SIM_KEYS = ("latency_ms", "output_tokens", "cached_ratio", "sim_tool_turns", "sim_parallel_calls", "fail_rate")


def _json(value: Any) -> Any:
    """The graph's state as JSON: messages as OpenAI-style dicts, models dumped, anything else as text."""
    if isinstance(value, BaseMessage):
        return convert_to_openai_messages(value)
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    dump = getattr(value, "model_dump", None)
    return _json(dump()) if callable(dump) else str(value)


def _model(ex: LangGraphExecutor, ctx: ExecutionContext, units: AgentUnits) -> GovernedChatModel:
    inputs = ctx.inputs
    name = str(inputs.get("model") or "sim-small")
    inner: BaseChatModel
    if name.startswith("sim-") or inputs.get("provider") == "sim":
        knobs = {k: inputs[k] for k in (*_SIM_KEYS, *_MODEL_KEYS) if k in inputs}
        inner = SimChatModel(model_name=name, seed=ctx.seed, knobs=knobs,
                             sim=SimulatedLLM(ex.prices, sleep=ex.sim_sleep))
        provider = "sim"
    else:
        from langchain_openai import ChatOpenAI

        base_url = inputs.get("base_url") if isinstance(inputs.get("base_url"), str) else ex.llm_base_url
        if not base_url:
            raise StepFailure(ErrorKind.VALIDATION, "no LLM endpoint: set FLEETFORGE_LLM_BASE_URL or the step's "
                              "inputs.base_url, or use a sim-* model", tool=name, provider="openai")
        key = ex.llm_api_key if base_url == ex.llm_base_url and ex.llm_api_key else "unused"
        settings = {k: inputs[k] for k in _MODEL_KEYS if k in inputs}
        inner = ChatOpenAI(model=name, base_url=base_url, api_key=key, max_retries=0,  # type: ignore[arg-type]
                           stream_usage=True, **settings)
        provider = str(inputs.get("provider") or "openai")
    return GovernedChatModel(inner=inner, units=units, prices=ex.prices, model_name=name, provider=provider,
                             loop=asyncio.get_running_loop())


Execute = Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]
Wrapper = Callable[[ToolCallRequest, Execute], Awaitable[ToolMessage | Command[Any]]]


def govern_tool_call(units: AgentUnits, governed: set[str], inner: Wrapper | None = None) -> Wrapper:
    """A ToolNode `awrap_tool_call` making each tool call a held unit (see module doc); `inner` is the
    node's own interceptor, run inside."""

    async def wrap(request: ToolCallRequest, execute: Execute) -> ToolMessage | Command[Any]:
        call = request.tool_call
        cid, name = str(call.get("id") or ""), str(call.get("name") or "")
        args = call.get("args") if isinstance(call.get("args"), dict) else {}
        unit = await units.call(cid, name, dict(args))
        if unit.output is not None:  # ran in an earlier attempt: its recorded result
            return ToolMessage(content=str(unit.output.get("content", json.dumps(unit.output))), tool_call_id=cid,
                               name=name, status="error" if "error" in unit.output else "success")
        if unit.refusal:
            return ToolMessage(content=f"Error: {unit.refusal}", tool_call_id=cid, name=name, status="error")
        sent = unit.inputs.get("args")
        if isinstance(sent, dict) and sent != args:  # the pre-hook guardrails rewrote the arguments
            request = request.override(tool_call={**call, "args": sent})
        governed.add(cid)
        try:
            message = await (inner(request, execute) if inner is not None else execute(request))
        except Exception as exc:
            await units.finish(unit, failure=StepFailure(classify(exc), f"{type(exc).__name__}: {exc}"[:4000],
                                                         tool=name, provider=_PROVIDER))
            raise
        if not isinstance(message, ToolMessage):  # a Command: recorded as such
            await units.finish(unit, ExecutionResult({"content": str(message)}, tool=name, provider=_PROVIDER))
            return message
        content = message.content if isinstance(message.content, str) else json.dumps(message.content)
        if message.status == "error":
            out = await units.finish(unit, failure=StepFailure(ErrorKind.CRASH, content[:4000], tool=name,
                                                               provider=_PROVIDER))
            return message
        out = await units.finish(unit, ExecutionResult({"content": content}, tool=name, provider=_PROVIDER))
        if out.get("content", content) != content:  # the post-hook guardrails rewrote the result
            message = message.model_copy(update={"content": out["content"]})
        return message

    return wrap


def intercept(node: ToolNode, wrapper: Callable[[Wrapper | None], Wrapper]) -> None:
    """Make `wrapper(own)` the `awrap_tool_call` of a ToolNode the graph built (`own`: the node's interceptor,
    if any, run inside). LangGraph takes `awrap_tool_call` only as a ToolNode constructor argument and has
    no public way to set it on a built graph's node, so this sets the attribute the constructor stores it
    in; a LangGraph that stores it elsewhere fails the step, naming its version (docs/agents.md)."""
    own = getattr(node, "_awrap_tool_call", False)
    if not (own is None or callable(own)):
        raise StepFailure(ErrorKind.VALIDATION, f"langgraph-prebuilt {_version('langgraph-prebuilt')} ToolNode has "
                          "no `_awrap_tool_call` to intercept its tool calls: FleetForge cannot govern them; install "
                          "the versions the extra pins (pip install 'fleetforge[langgraph]')", provider=_PROVIDER)
    node._awrap_tool_call = wrapper(own)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


class _Guard(AsyncCallbackHandler):
    """Refuses chat-model and tool calls that bypass the governed model and ToolNodes."""

    raise_error = True
    run_inline = True

    def __init__(self, governed_tools: set[str], entrypoint: str, takes_model: bool) -> None:
        self.governed_tools = governed_tools
        self.entrypoint = entrypoint
        self.takes_model = takes_model

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                                  run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        ident = serialized.get("id") if isinstance(serialized, dict) else None
        if not (isinstance(ident, list) and ident and ident[-1] == GovernedChatModel.__name__):
            name = ident[-1] if isinstance(ident, list) and ident else "a chat model"
            raise StepFailure(ErrorKind.VALIDATION, _own_model_message(name, self.entrypoint, self.takes_model),
                              provider=_PROVIDER)

    async def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if kwargs.get("tool_call_id") not in self.governed_tools:
            name = serialized.get("name", "a tool") if isinstance(serialized, dict) else "a tool"
            raise StepFailure(ErrorKind.VALIDATION, f"the graph ran tool {name!r} outside a ToolNode: run tools "
                              "through langgraph.prebuilt.ToolNode so FleetForge records them", provider=_PROVIDER)


def _own_model_message(name: str, entrypoint: str, takes_model: bool) -> str:
    """How to fix a graph that calls a chat model of its own (`name`) instead of the one FleetForge passes."""
    module, _, func = entrypoint.partition(":")
    fix = (f"build every model call of the graph on the `model` argument FleetForge passes to {entrypoint}"
           if takes_model else
           f"the entrypoint {entrypoint} takes no `model` parameter: add one (`def {func}(model): ...` in "
           f"{module}) and build the graph's model calls on it (`model.bind_tools(tools)`) instead of "
           f"creating {name} itself")
    return (f"the graph called a chat model it made itself ({name}), which FleetForge cannot budget, guard or "
            f"record: {fix}; the step's inputs.model chooses the model (docs/agents.md)")


def _takes_model(entry: Callable[..., Any]) -> bool:
    return "model" in inspect.signature(entry).parameters


def _build(entry: Callable[..., Any], model: GovernedChatModel, saver: BaseCheckpointSaver[Any]) -> Any:
    made = entry(model=model) if _takes_model(entry) else entry()
    if hasattr(made, "compile") and not hasattr(made, "ainvoke"):  # a StateGraph builder
        return made.compile(checkpointer=saver)
    if not hasattr(made, "ainvoke") or not hasattr(made, "copy"):
        raise StepFailure(ErrorKind.VALIDATION, f"the entrypoint returned a {type(made).__name__}, expected a "
                          "LangGraph StateGraph or compiled graph", provider=_PROVIDER)
    return made.copy({"checkpointer": saver})


async def run_graph(ex: LangGraphExecutor, ctx: ExecutionContext, units: AgentUnits) -> ExecutionResult:
    """One attempt of a graph step: fresh from `initial_state`, or resumed from its last checkpoint."""
    inputs = ctx.inputs
    entrypoint = str(inputs[GRAPH_ENTRYPOINT])
    try:
        entry = await asyncio.to_thread(load_entrypoint, entrypoint)  # imports user code: off the loop
    except ValueError as exc:
        raise StepFailure(ErrorKind.VALIDATION, str(exc), tool=entrypoint, provider=_PROVIDER) from None
    model = _model(ex, ctx, units)
    governed: set[str] = set()
    user: dict[str, Any] = inputs["config"] if isinstance(inputs.get("config"), dict) else {}
    config: dict[str, Any] = {
        "configurable": {**(user.get("configurable") or {}), "thread_id": thread_id(ctx.run_id, ctx.step.id)},
        "recursion_limit": int(user.get("recursion_limit", 25)),
        "callbacks": [_Guard(governed, entrypoint, _takes_model(entry))],
        "metadata": {"fleetforge_run": ctx.run_id, "fleetforge_step": ctx.step.id, "fleetforge_attempt": ctx.attempt},
    }
    async with checkpointer(units.database, units.schema) as saver:
        graph = _build(entry, model, saver)
        for node in graph.nodes.values():
            bound = getattr(node, "bound", None)
            if isinstance(bound, ToolNode):
                intercept(bound, lambda own: govern_tool_call(units, governed, own))
        last = await saver.aget_tuple(config)  # type: ignore[arg-type]
        try:
            if last is None:
                values = await graph.ainvoke(dict(inputs.get("initial_state") or {}), config, durability="sync")
            else:
                state = await graph.aget_state(config)
                values = state.values if not state.next else await graph.ainvoke(None, config, durability="sync")
        except StepFailure:
            raise
        except GraphRecursionError as exc:
            raise StepFailure(ErrorKind.MAX_TURNS, f"graph: {exc}"[:4000], tool=entrypoint,
                              provider=_PROVIDER) from None
        except Exception as exc:
            raise StepFailure(classify(exc), f"graph: {type(exc).__name__}: {exc}"[:4000], tool=entrypoint,
                              provider=_PROVIDER) from None
    selected = inputs.get("output")
    keys = [selected] if isinstance(selected, str) else selected if isinstance(selected, list) else None
    state = values if isinstance(values, dict) else {"value": values}
    output = _json({k: state.get(k) for k in keys} if keys else state)
    return ExecutionResult(output=output, tool=entrypoint, provider=_PROVIDER, model=model.model_name)
