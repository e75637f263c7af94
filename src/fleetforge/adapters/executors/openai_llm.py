"""The `llm` step executor for any OpenAI-compatible `POST {base_url}/chat/completions` server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx

from fleetforge.adapters.executors.http_step import (
    error_snippet,
    parse_retry_after,
    status_kind,
    transport_failure,
)
from fleetforge.core.pricing import PriceTable, estimate_llm
from fleetforge.domain.models import ErrorKind, StepSpec
from fleetforge.domain.secrets import redact_text
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure, Usage

__all__ = ["OpenAICompatibleLLM", "chat_request"]


def chat_request(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The chat/completions body for step inputs; raises ValueError naming the bad input."""
    model = inputs.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: got {model!r:.60}, expected a model name")
    messages = inputs.get("messages")
    prompt = inputs.get("prompt")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: expected a non-empty list of {role, content} objects")
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise ValueError(f"messages[{i}]: expected an object with a string role")
        body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages]}
    elif isinstance(prompt, str):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    else:
        raise ValueError(f"prompt: got {type(prompt).__name__}, expected a string (or set messages)")
    temperature = inputs.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
            raise ValueError(f"temperature: got {temperature!r:.40}, expected a number >= 0")
        body["temperature"] = temperature
    max_tokens = inputs.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ValueError(f"max_tokens: got {max_tokens!r:.40}, expected a positive integer")
        body["max_tokens"] = max_tokens
    tools = inputs.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, Mapping) and t.get("type") == "function"
                                                  for t in tools):
            raise ValueError(f"tools: got {tools!r:.80}, expected a list of {{type: function, function}} objects")
        if tools:  # tool_choice and parallel_tool_calls mean something only with tools
            body["tools"] = [dict(t) for t in tools]
            for key in ("tool_choice", "parallel_tool_calls"):
                if inputs.get(key) is not None:
                    body[key] = inputs[key]
    return body


def _int_field(data: Mapping[str, Any], key: str, where: str = "usage") -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}.{key}: got {value!r:.40}, expected an integer >= 0")
    return value


def _parse_completion(body: Any, requested_model: str) -> tuple[dict[str, Any], str, int, int, int]:
    """(output, model, prompt, completion, cached tokens) of a completion; ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError(f"body: got {type(body).__name__}, expected an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("choices: missing or empty")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("choices[0].message: missing")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"choices[0].message.content: got {type(content).__name__}, expected a string")
    usage = body.get("usage")
    if not isinstance(usage, dict):
        raise ValueError("usage: missing")
    prompt_tokens = _int_field(usage, "prompt_tokens")
    completion_tokens = _int_field(usage, "completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = 0
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        cached = _int_field(details, "cached_tokens", "usage.prompt_tokens_details")
    model = body.get("model")
    model = model if isinstance(model, str) and model else requested_model
    output: dict[str, Any] = {
        "text": content or "",
        "model": model,
        "finish_reason": choices[0].get("finish_reason"),
    }
    if message.get("tool_calls"):
        output["tool_calls"] = message["tool_calls"]
    return output, model, prompt_tokens, completion_tokens, min(cached, prompt_tokens)


class OpenAICompatibleLLM:
    """Runs `llm` steps against an OpenAI-compatible chat completions endpoint.

    Inputs: `model`, `prompt` (sent as one user message) or `messages` (any chat message, including
    assistant `tool_calls` and `role: tool` results), optional `temperature`, `max_tokens`, `tools`
    (function definitions), `tool_choice` and `parallel_tool_calls`; a reply's `tool_calls` are in
    the output. The whole attempt is bounded by ``ctx.deadline_s``.
    The API key is sent as a bearer token and never appears in a failure message.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        prices: PriceTable,
        provider: str = "openai",
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._prices = prices
        self.provider = provider

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """Prompt chars / 4 plus `max_tokens` (or the default), priced for the step's model."""
        return estimate_llm(self._prices, step.inputs, default_model="")

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(requested model, provider)."""
        model = step.inputs.get("model")
        return (model if isinstance(model, str) else ""), self.provider

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        model_in = ctx.inputs.get("model")
        requested = model_in if isinstance(model_in, str) else ""
        try:
            body = chat_request(ctx.inputs)
        except ValueError as exc:
            raise self._fail(ErrorKind.VALIDATION, str(exc), requested) from None
        if ctx.deadline_s <= 0:
            raise self._fail(ErrorKind.TIMEOUT, "deadline already passed", requested)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        what = f"{self.provider} chat/completions ({requested})"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(ctx.deadline_s):
                response = await self._client.post(
                    self._url, json=body, headers=headers, timeout=ctx.deadline_s
                )
        except Exception as exc:
            raise transport_failure(
                exc, what, tool=requested, provider=self.provider, secrets=[self._api_key]
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        status = response.status_code
        kind = status_kind(status)
        if kind is None and not 200 <= status < 300:
            kind = ErrorKind.VALIDATION  # a redirect: the base URL is wrong
        if kind is not None:
            retry_after = (
                parse_retry_after(response.headers, time.time()) if kind is ErrorKind.RATE_LIMITED else None
            )
            raise self._fail(
                kind, f"{what} returned {status}: {error_snippet(response)}", requested, retry_after
            )
        try:
            output, model, prompt_t, completion_t, cached_t = _parse_completion(response.json(), requested)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._fail(ErrorKind.VALIDATION, f"{what}: malformed response: {exc}", requested) from None
        usage = Usage(
            input_tokens=prompt_t,
            output_tokens=completion_t,
            cached_tokens=cached_t,
            cost_usd=self._prices.cost(model, prompt_t, cached_t, completion_t),
        )
        return ExecutionResult(
            output=output,
            usage=usage,
            tool=model,
            provider=self.provider,
            model=model,
            latency_ms=latency_ms,
        )

    def _fail(
        self, kind: ErrorKind, message: str, model: str, retry_after_s: float | None = None
    ) -> StepFailure:
        return StepFailure(
            kind,
            redact_text(message, [self._api_key]),
            tool=model,
            provider=self.provider,
            retry_after_s=retry_after_s,
        )
