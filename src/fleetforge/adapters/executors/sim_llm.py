"""A deterministic simulated LLM provider ("sim") for demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fleetforge.core.pricing import PriceTable, estimate_llm, prompt_text
from fleetforge.domain.models import ErrorKind, StepSpec
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure, Usage

__all__ = [
    "DEFAULT_SIM_MODEL",
    "SIM_FAILURE_KINDS",
    "SimOutcome",
    "SimParams",
    "SimulatedLLM",
    "attempt_rng",
    "sim_tool_calls",
    "simulate",
]

DEFAULT_SIM_MODEL: Final = "sim-small"
SIM_FAILURE_KINDS: Final = (ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED, ErrorKind.HTTP_5XX)
DEFAULT_LATENCY_MS: Final = 50.0
DEFAULT_OUTPUT_TOKENS: Final = 64
LATENCY_SIGMA: Final = 0.5  # log-normal spread; the mean stays at latency_ms
FAST_FAILURE_SHARE: Final = 0.25  # 429/5xx answer after this share of the latency
MAX_TEXT_WORDS: Final = 64
VOCAB: Final = (
    "agent", "budget", "cache", "deploy", "event", "fleet", "graph", "guard", "latency", "model",
    "outbox", "policy", "queue", "retry", "run", "span", "step", "token", "tool", "trace",
)  # fmt: skip


def attempt_rng(seed: int, step_id: str, attempt: int) -> random.Random:
    """A Random seeded by SHA-256 of (run seed, step id, attempt): stable across processes."""
    digest = hashlib.sha256(f"{seed}\x1f{step_id}\x1f{attempt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _number(inputs: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = inputs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{key}: got {value!r:.40}, expected a number in [{low}, {high}]")
    return float(value)


@dataclass(frozen=True, slots=True)
class SimParams:
    """The simulator's knobs, read from step inputs."""

    model: str = DEFAULT_SIM_MODEL
    fail_rate: float = 0.0
    failure_kinds: tuple[ErrorKind, ...] = SIM_FAILURE_KINDS
    latency_ms: float = DEFAULT_LATENCY_MS
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    cached_ratio: float = 0.0
    max_tokens: int | None = None

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> SimParams:
        """Parse and check the knobs; raises ValueError naming the bad input."""
        model = inputs.get("model", DEFAULT_SIM_MODEL)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: got {model!r:.40}, expected a model name")
        raw_kinds = inputs.get("failure_kinds", [k.value for k in SIM_FAILURE_KINDS])
        allowed = {k.value for k in SIM_FAILURE_KINDS}
        if (
            not isinstance(raw_kinds, list | tuple)
            or not raw_kinds
            or not all(isinstance(k, str) and k in allowed for k in raw_kinds)
        ):
            raise ValueError(
                f"failure_kinds: got {raw_kinds!r:.80}, expected a non-empty subset of {sorted(allowed)}"
            )
        max_tokens = inputs.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        ):
            raise ValueError(f"max_tokens: got {max_tokens!r:.40}, expected a positive integer")
        return cls(
            model=model,
            fail_rate=_number(inputs, "fail_rate", 0.0, 0.0, 1.0),
            failure_kinds=tuple(ErrorKind(k) for k in dict.fromkeys(raw_kinds)),
            latency_ms=_number(inputs, "latency_ms", DEFAULT_LATENCY_MS, 0.0, 3_600_000.0),
            output_tokens=round(_number(inputs, "output_tokens", DEFAULT_OUTPUT_TOKENS, 0, 1_000_000)),
            cached_ratio=_number(inputs, "cached_ratio", 0.0, 0.0, 1.0),
            max_tokens=max_tokens,
        )


@dataclass(frozen=True, slots=True)
class SimOutcome:
    """What one simulated attempt does; `failure` is None on success."""

    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    latency_ms: float
    failure: ErrorKind | None
    retry_after_s: float | None
    text: str


def simulate(params: SimParams, prompt: str, deadline_s: float, rng: random.Random) -> SimOutcome:
    """The attempt's outcome. Draws from `rng` in a fixed order, so equal inputs give equal outcomes."""
    prompt_tokens = max(1, round(len(prompt) / 4 * rng.uniform(0.9, 1.1)))
    mean_out = params.output_tokens
    output_tokens = max(1, round(rng.gauss(mean_out, mean_out * 0.25))) if mean_out > 0 else 0
    if params.max_tokens is not None:
        output_tokens = min(output_tokens, params.max_tokens)
    cached_tokens = math.floor(prompt_tokens * params.cached_ratio)
    latency_ms = params.latency_ms * rng.lognormvariate(-(LATENCY_SIGMA**2) / 2, LATENCY_SIGMA)
    injected = rng.random() < params.fail_rate
    picked = rng.choice(params.failure_kinds)
    retry_after_s = round(rng.uniform(0.05, 1.0), 3)
    words = [rng.choice(VOCAB) for _ in range(min(output_tokens, MAX_TEXT_WORDS))]
    failure: ErrorKind | None = picked if injected else None
    if failure is None and latency_ms / 1000.0 > deadline_s:
        failure = ErrorKind.TIMEOUT
    return SimOutcome(
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        latency_ms=round(latency_ms, 3),
        failure=failure,
        retry_after_s=retry_after_s if failure is ErrorKind.RATE_LIMITED else None,
        text=" ".join(words),
    )


DEFAULT_TOOL_TURNS: Final = 2


def _count(inputs: Mapping[str, Any], key: str, default: int, low: int) -> int:
    value = inputs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}: got {value!r:.40}, expected an integer >= {low}")
    return value


def _sim_value(schema: Any, rng: random.Random) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(schema, dict) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [_sim_value(schema.get("items", {"type": "string"}), rng)]
    return rng.choice(VOCAB)


def sim_tool_calls(inputs: Mapping[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The tool calls a simulated agent turn makes: turn k (the number of assistant messages so far
    plus one) calls tools while k <= `sim_tool_turns` (default 2) — `sim_parallel_calls` of them
    (default 1), the j-th being tool (k - 1 + j) mod len(tools) — with arguments drawn from the seed
    for the properties of the tool's JSON Schema (`query` when it names none); then it answers."""
    tools = [t for t in inputs.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not tools or inputs.get("tool_choice") == "none":
        return []
    messages = inputs.get("messages") or []
    turn = 1 + sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    if turn > _count(inputs, "sim_tool_turns", DEFAULT_TOOL_TURNS, 0):
        return []
    width = 1 if inputs.get("parallel_tool_calls") is False else _count(inputs, "sim_parallel_calls", 1, 1)
    calls = []
    for j in range(width):
        fn = tools[(turn - 1 + j) % len(tools)]["function"]
        props = (fn.get("parameters") or {}).get("properties") or {"query": {"type": "string"}}
        args = {name: _sim_value(schema, rng) for name, schema in sorted(props.items())}
        calls.append({"id": f"call_{turn}_{j}", "type": "function",
                      "function": {"name": fn["name"], "arguments": json.dumps(args, sort_keys=True)}})
    return calls


class SimulatedLLM:
    """Runs `llm` steps against a simulated provider; outcomes depend only on (seed, step id, attempt).

    Inputs: `model` (sim-small), `fail_rate` (0.0), `failure_kinds` (timeout, rate_limited,
    http_5xx), `latency_ms` (mean, 50), `output_tokens` (mean, 64), `cached_ratio` (0.0),
    `max_tokens`, and `prompt` or `messages`. With ``sleep=False`` nothing waits;
    `time_scale` multiplies every wait (simulated latency and deadlines are unaffected).
    """

    provider: Final = "sim"

    def __init__(self, prices: PriceTable, *, sleep: bool = True, time_scale: float = 1.0) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale: got {time_scale}, expected >= 0")
        self._prices = prices
        self._sleep = sleep
        self._time_scale = time_scale

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """Prompt chars / 4 plus `max_tokens` (or the `output_tokens` mean), priced for the model."""
        mean = step.inputs.get("output_tokens", DEFAULT_OUTPUT_TOKENS)
        default_out = round(mean) if isinstance(mean, int | float) and not isinstance(mean, bool) else 0
        return estimate_llm(
            self._prices,
            step.inputs,
            default_model=DEFAULT_SIM_MODEL,
            default_output_tokens=max(0, default_out) or DEFAULT_OUTPUT_TOKENS,
        )

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(model, "sim")."""
        model = step.inputs.get("model")
        return (model if isinstance(model, str) and model else DEFAULT_SIM_MODEL), self.provider

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        try:
            params = SimParams.from_inputs(ctx.inputs)
        except ValueError as exc:
            raise StepFailure(
                ErrorKind.VALIDATION, str(exc), tool=self.target(ctx.step)[0], provider=self.provider
            ) from None
        rng = attempt_rng(ctx.seed, ctx.step.id, ctx.attempt)
        outcome = simulate(params, prompt_text(ctx.inputs), ctx.deadline_s, rng)
        if outcome.failure is ErrorKind.TIMEOUT:
            await self._wait(ctx.deadline_s * 1000.0, ctx.deadline_s)
            raise StepFailure(
                ErrorKind.TIMEOUT,
                f"sim {params.model}: no answer within {ctx.deadline_s:g}s",
                tool=params.model,
                provider=self.provider,
            )
        if outcome.failure is not None:
            await self._wait(outcome.latency_ms * FAST_FAILURE_SHARE, ctx.deadline_s)
            status = 429 if outcome.failure is ErrorKind.RATE_LIMITED else 503
            raise StepFailure(
                outcome.failure,
                f"sim {params.model}: injected {outcome.failure.value} (HTTP {status})",
                tool=params.model,
                provider=self.provider,
                retry_after_s=outcome.retry_after_s,
            )
        await self._wait(outcome.latency_ms, ctx.deadline_s)
        usage = Usage(
            input_tokens=outcome.prompt_tokens,
            output_tokens=outcome.output_tokens,
            cached_tokens=outcome.cached_tokens,
            cost_usd=self._prices.cost(
                params.model, outcome.prompt_tokens, outcome.cached_tokens, outcome.output_tokens
            ),
        )
        output: dict[str, Any] = {"text": outcome.text, "model": params.model}
        try:
            calls = sim_tool_calls(ctx.inputs, rng)
        except ValueError as exc:
            raise StepFailure(ErrorKind.VALIDATION, str(exc), tool=params.model, provider=self.provider) from None
        if calls:
            output = {"text": "", "model": params.model, "tool_calls": calls, "finish_reason": "tool_calls"}
        return ExecutionResult(
            output=output,
            usage=usage,
            tool=params.model,
            provider=self.provider,
            model=params.model,
            latency_ms=outcome.latency_ms,
        )

    async def _wait(self, simulated_ms: float, deadline_s: float) -> None:
        if not self._sleep:
            return
        seconds = min(simulated_ms / 1000.0 * self._time_scale, max(0.0, deadline_s))
        if seconds > 0:
            await asyncio.sleep(seconds)
