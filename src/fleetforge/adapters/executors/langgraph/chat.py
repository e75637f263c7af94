"""LangChain chat models for graph steps: the simulator as a chat model, and the governed wrapper.

`GovernedChatModel` wraps the chat model FleetForge gives a graph's entrypoint: each call is a held
unit (`AgentUnits.turn`): budget reserved and pre-hook guardrails decided before it runs (a redaction
changes the messages the model receives), usage from the answer's `usage_metadata` priced by the price
table after it, and an answer recorded in an earlier attempt is returned as recorded, not paid again.
Imports LangChain: load it only where a graph runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from fleetforge.adapters.executors.sim_llm import SimulatedLLM
from fleetforge.core.pricing import PriceTable
from fleetforge.domain.models import ErrorKind, StepSpec, StepType
from fleetforge.ports.executor import AgentUnits, ExecutionContext, ExecutionResult, StepFailure, Usage

__all__ = ["GovernedChatModel", "SimChatModel", "classify", "request_key"]


def _bind(model: BaseChatModel, tools: Sequence[Any], tool_choice: Any, kwargs: dict[str, Any]) -> Runnable[
        LanguageModelInput, AIMessage]:
    """`tools` as OpenAI function definitions bound to `model` (what ChatOpenAI.bind_tools does)."""
    formatted = [convert_to_openai_tool(t) for t in tools]
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required", "any"):
        tool_choice = {"type": "function", "function": {"name": tool_choice}}
    elif tool_choice == "any":
        tool_choice = "required"
    extra = {"tool_choice": tool_choice} if tool_choice else {}
    return model.bind(tools=formatted, **extra, **kwargs)


def _sync(coro: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
    """Run `coro` from a sync node: on the worker's loop (nodes run in threads), or a fresh one."""
    if loop is not None and loop.is_running():
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    return asyncio.run(coro)


def _openai_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [{"id": c.get("id") or "", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("args") or {}, sort_keys=True)}}
            for c in message.tool_calls]


def _message_from(output: dict[str, Any]) -> AIMessage:
    """The assistant message a recorded turn output stands for."""
    calls = []
    for c in output.get("tool_calls") or ():
        fn = c.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {}
        calls.append({"name": fn.get("name", ""), "args": args if isinstance(args, dict) else {},
                      "id": c.get("id"), "type": "tool_call"})
    return AIMessage(content=output.get("text") or "", tool_calls=calls,
                     response_metadata={"model_name": output.get("model", "")})


def request_key(model: str, messages: list[dict[str, Any]], tools: list[Any]) -> str:
    """A digest of a chat request: the same request in a node that runs again finds its recorded turn."""
    text = json.dumps({"model": model, "messages": messages, "tools": tools}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def classify(exc: BaseException) -> ErrorKind:
    """The failure kind of an exception from a chat model or a tool (HTTP status when it has one)."""
    if isinstance(exc, StepFailure):
        return exc.kind
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        if status == 429:
            return ErrorKind.RATE_LIMITED
        return ErrorKind.HTTP_5XX if status >= 500 else ErrorKind.HTTP_4XX
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return ErrorKind.TIMEOUT
    return ErrorKind.CRASH


class SimChatModel(BaseChatModel):
    """The deterministic simulator as a LangChain chat model: text, usage and tool calls depend only on the
    seed and the request (the simulator's rules for agents: turn k calls a tool while k <= sim_tool_turns)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model_name: str = "sim-small"
    seed: int = 0
    knobs: dict[str, Any] = Field(default_factory=dict)  # simulator inputs (latency_ms, ...)
    sim: SimulatedLLM | None = None

    @property
    def _llm_type(self) -> str:
        return "fleetforge-sim"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return _bind(self, tools, tool_choice, kwargs)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        openai_messages = convert_to_openai_messages(messages)
        inputs: dict[str, Any] = {**self.knobs, "model": self.model_name, "messages": openai_messages}
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            if kwargs.get(key) is not None:
                inputs[key] = kwargs[key]
        sim = self.sim or SimulatedLLM(PriceTable(), sleep=False)
        key = request_key(self.model_name, openai_messages, inputs.get("tools") or [])
        ctx = ExecutionContext(run_id="", step=StepSpec(id=key, type=StepType.LLM, inputs=inputs), attempt=1,
                               seed=self.seed, inputs=inputs, deadline_s=600.0)
        result = await sim.execute(ctx)
        message = _message_from(result.output)
        u = result.usage
        message.usage_metadata = {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                                  "total_tokens": u.tokens, "input_token_details": {"cache_read": u.cached_tokens}}
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return _sync(self._agenerate(messages, stop, **kwargs), None)  # type: ignore[no-any-return]


class GovernedChatModel(BaseChatModel):
    """A chat model whose every call is a durable unit of the graph step (see module doc)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    inner: BaseChatModel
    units: Any  # AgentUnits
    prices: PriceTable
    model_name: str
    provider: str
    loop: asyncio.AbstractEventLoop | None = None
    on_call: Callable[[], None] | None = None  # tests count calls that reached the model

    @property
    def _llm_type(self) -> str:
        return "fleetforge-governed"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return _bind(self, tools, tool_choice, kwargs)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        units: AgentUnits = self.units
        openai_messages = convert_to_openai_messages(messages)
        tools = list(kwargs.get("tools") or [])
        request: dict[str, Any] = {"model": self.model_name, "provider": self.provider, "messages": openai_messages}
        names = [t.get("function", {}).get("name", "") for t in tools if isinstance(t, dict)]
        if names:
            request["tools"] = names
        unit = await units.turn(request, request_key(self.model_name, openai_messages, tools))
        if unit.output is not None:  # answered in an earlier attempt: recorded, not paid again
            return ChatResult(generations=[ChatGeneration(message=_message_from(unit.output))])
        sent = unit.inputs.get("messages")
        if isinstance(sent, list) and sent != openai_messages:  # the pre-hook guardrails rewrote them
            messages = convert_to_messages(sent)
        config: RunnableConfig = {"callbacks": []}  # the inner call is this unit: not a call of its own
        try:
            if self.on_call is not None:
                self.on_call()
            answer = await self.inner.ainvoke(messages, config, stop=stop, **kwargs)
        except Exception as exc:
            await units.finish(unit, failure=StepFailure(classify(exc), f"{type(exc).__name__}: {exc}"[:4000],
                                                         tool=self.model_name, provider=self.provider))
            raise
        if not isinstance(answer, AIMessage):
            answer = AIMessage(content=answer.content)
        model = str(answer.response_metadata.get("model_name") or self.model_name)
        meta: dict[str, Any] = dict(answer.usage_metadata or {})
        cached = int((meta.get("input_token_details") or {}).get("cache_read") or 0)
        tokens_in, tokens_out = int(meta.get("input_tokens") or 0), int(meta.get("output_tokens") or 0)
        usage = Usage(tokens_in, tokens_out, cached, self.prices.cost(model, tokens_in, cached, tokens_out))
        text = answer.content if isinstance(answer.content, str) else answer.text
        output: dict[str, Any] = {"text": text, "model": model}
        if answer.tool_calls:
            output["tool_calls"] = _openai_calls(answer)
        kept = await units.finish(unit, ExecutionResult(output, usage, model, self.provider, model))
        if kept.get("text", text) != text:  # the post-hook guardrails rewrote the answer
            answer = answer.model_copy(update={"content": kept["text"]})
        return ChatResult(generations=[ChatGeneration(message=answer)])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return _sync(self._agenerate(messages, stop, **kwargs), self.loop)  # type: ignore[no-any-return]
