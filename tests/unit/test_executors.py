"""Unit tests of the step executors: pricing, simulator, tools, HTTP (mock transport), wiring."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from fleetforge.adapters.executors.build import LLMDispatcher, build_executors
from fleetforge.adapters.executors.http_step import HttpExecutor, parse_retry_after
from fleetforge.adapters.executors.sim_llm import SimulatedLLM, attempt_rng
from fleetforge.adapters.executors.tools import (
    ToolError,
    ToolExecutor,
    ToolRegistry,
    register_demo_tools,
    safe_eval,
)
from fleetforge.core.pricing import Price, PriceTable, estimate_llm
from fleetforge.domain.models import ErrorKind, StepSpec, StepType
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor, StepFailure

PRICES = PriceTable()


def ctx_for(
    step_type: StepType,
    inputs: dict[str, Any],
    *,
    step_id: str = "s1",
    attempt: int = 1,
    seed: int = 7,
    deadline_s: float = 5.0,
) -> ExecutionContext:
    step = StepSpec(id=step_id, type=step_type, inputs=inputs)
    return ExecutionContext(
        run_id="run-1", step=step, attempt=attempt, seed=seed, inputs=inputs, deadline_s=deadline_s
    )


def run(executor: Executor, ctx: ExecutionContext) -> ExecutionResult | StepFailure:
    async def go() -> ExecutionResult | StepFailure:
        try:
            return await executor.execute(ctx)
        except StepFailure as failure:
            return failure

    return asyncio.run(go())


def failure(outcome: ExecutionResult | StepFailure) -> StepFailure:
    assert isinstance(outcome, StepFailure), f"expected a failure, got {outcome!r}"
    return outcome


def success(outcome: ExecutionResult | StepFailure) -> ExecutionResult:
    assert isinstance(outcome, ExecutionResult), f"expected success, got {outcome!r}"
    return outcome


# ---- pricing ------------------------------------------------------------------------------------


def test_cost_prices_cached_tokens_at_the_cached_rate() -> None:
    # gpt-4o: 2.50 input, 1.25 cached, 10.00 output per 1M
    assert PRICES.cost("gpt-4o", 1000, 400, 200) == pytest.approx(0.004)
    assert PRICES.cost("gpt-4o", 1000, 0, 200) == pytest.approx(0.0045)
    # cached tokens can never exceed input tokens
    assert PRICES.cost("gpt-4o", 100, 500, 0) == PRICES.cost("gpt-4o", 100, 100, 0)


def test_cost_is_rounded_to_six_decimals() -> None:
    cost = PRICES.cost("gpt-4o-mini", 7, 3, 11)
    assert cost == round(cost, 6)
    assert PRICES.cost("gpt-4o-mini", 1, 0, 0) == 0.0  # 1.5e-7 rounds away


def test_longest_prefix_wins_and_vendor_prefix_is_ignored() -> None:
    assert PRICES.price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.075, 0.60)
    assert PRICES.price("gpt-4o-2024-08-06") == Price(2.50, 1.25, 10.00)
    assert PRICES.price("gpt-4.1-mini") == Price(0.40, 0.10, 1.60)
    assert PRICES.price("openai/GPT-4.1-mini") == Price(0.40, 0.10, 1.60)
    assert PRICES.price("claude-sonnet-4-20250514").output == 15.00
    assert PRICES.lookup("my-local-llama") is None


def test_unknown_models_use_the_default() -> None:
    table = PriceTable({"a": Price(1, 1, 1)}, default=Price(0, 0, 0))
    assert table.cost("zzz", 10_000, 0, 10_000) == 0.0
    assert table.with_entries({"zzz": Price(1, 0.5, 2)}).cost("zzz-1", 1_000_000, 0, 0) == 1.0


def test_estimate_llm_uses_prompt_length_and_max_tokens() -> None:
    tokens, usd = estimate_llm(
        PRICES, {"model": "gpt-4o", "prompt": "x" * 400, "max_tokens": 50}, default_model=""
    )
    assert tokens == 150
    assert usd == PRICES.cost("gpt-4o", 100, 0, 50)
    tokens, _ = estimate_llm(
        PRICES,
        {"messages": [{"role": "user", "content": "y" * 40}]},
        default_model="sim-small",
        default_output_tokens=10,
    )
    assert tokens == 20


# ---- simulated LLM ------------------------------------------------------------------------------

SIM = SimulatedLLM(PRICES, sleep=False)


def test_sim_is_deterministic_per_seed_step_and_attempt() -> None:
    inputs = {"model": "sim-small", "prompt": "Summarise the incident report " * 20, "cached_ratio": 0.5}
    a = success(run(SIM, ctx_for(StepType.LLM, inputs)))
    b = success(run(SIM, ctx_for(StepType.LLM, inputs)))
    assert a == b
    assert a.provider == "sim" and a.model == "sim-small" and a.tool == "sim-small"
    assert a.output["model"] == "sim-small" and a.output["text"]
    assert a.usage.input_tokens > 0 and a.usage.output_tokens > 0
    assert a.usage.cached_tokens == a.usage.input_tokens // 2
    assert a.usage.cost_usd == PRICES.cost(
        "sim-small", a.usage.input_tokens, a.usage.cached_tokens, a.usage.output_tokens
    )
    c = success(run(SIM, ctx_for(StepType.LLM, inputs, attempt=2)))
    assert (c.output, c.usage, c.latency_ms) != (a.output, a.usage, a.latency_ms)
    d = success(run(SIM, ctx_for(StepType.LLM, inputs, seed=8)))
    assert d.output != a.output


def test_sim_failures_are_deterministic() -> None:
    inputs = {"prompt": "hi", "fail_rate": 0.5}
    for attempt in range(1, 30):
        first = run(SIM, ctx_for(StepType.LLM, inputs, attempt=attempt))
        second = run(SIM, ctx_for(StepType.LLM, inputs, attempt=attempt))
        if isinstance(first, StepFailure):
            assert isinstance(second, StepFailure)
            assert (first.kind, first.message, first.retry_after_s) == (
                second.kind,
                second.message,
                second.retry_after_s,
            )
        else:
            assert first == second


def test_sim_rng_is_stable_across_processes() -> None:
    code = (
        "from fleetforge.adapters.executors.sim_llm import attempt_rng;"
        "print(attempt_rng(42, 'step-a', 3).random())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert float(out.stdout) == attempt_rng(42, "step-a", 3).random()


def test_sim_failure_rate_and_kinds_are_honoured() -> None:
    inputs = {"prompt": "x" * 40, "fail_rate": 0.3, "failure_kinds": ["rate_limited", "http_5xx"]}
    outcomes = [run(SIM, ctx_for(StepType.LLM, inputs, step_id=f"s{i}")) for i in range(1000)]
    failures = [o for o in outcomes if isinstance(o, StepFailure)]
    assert 0.25 <= len(failures) / len(outcomes) <= 0.35
    assert {f.kind for f in failures} == {ErrorKind.RATE_LIMITED, ErrorKind.HTTP_5XX}
    for f in failures:
        assert f.provider == "sim"
        if f.kind is ErrorKind.RATE_LIMITED:
            assert f.retry_after_s is not None and f.retry_after_s > 0
        else:
            assert f.retry_after_s is None


def test_sim_times_out_when_latency_exceeds_the_deadline() -> None:
    slow = {"prompt": "x", "latency_ms": 10_000}
    f = failure(run(SIM, ctx_for(StepType.LLM, slow, deadline_s=0.5)))
    assert f.kind is ErrorKind.TIMEOUT
    assert isinstance(run(SIM, ctx_for(StepType.LLM, slow, deadline_s=3600)), ExecutionResult)
    injected = {"prompt": "x", "fail_rate": 1.0, "failure_kinds": ["timeout"]}
    assert failure(run(SIM, ctx_for(StepType.LLM, injected))).kind is ErrorKind.TIMEOUT


def test_sim_rejects_bad_inputs() -> None:
    bads: list[dict[str, Any]] = [
        {"fail_rate": 1.5},
        {"failure_kinds": ["http_4xx"]},
        {"failure_kinds": []},
        {"latency_ms": "fast"},
        {"max_tokens": 0},
    ]
    for bad in bads:
        assert failure(run(SIM, ctx_for(StepType.LLM, {"prompt": "x", **bad}))).kind is ErrorKind.VALIDATION


def test_sim_sleeps_scaled_latency() -> None:
    sim = SimulatedLLM(PRICES, sleep=True, time_scale=0.5)
    started = time.perf_counter()
    result = success(run(sim, ctx_for(StepType.LLM, {"prompt": "x", "latency_ms": 200})))
    elapsed = time.perf_counter() - started
    assert elapsed >= result.latency_ms / 1000 * 0.5 * 0.9


def test_sim_max_tokens_caps_output_and_estimate() -> None:
    inputs = {"prompt": "x" * 40, "output_tokens": 500, "max_tokens": 20}
    assert success(run(SIM, ctx_for(StepType.LLM, inputs))).usage.output_tokens <= 20
    step = StepSpec(id="s", type=StepType.LLM, inputs=inputs)
    assert SIM.estimate(step)[0] == 30
    assert SIM.estimate(StepSpec(id="s", type=StepType.LLM, inputs={"prompt": "x" * 40}))[0] == 74
    assert SIM.target(step) == ("sim-small", "sim")


# ---- tools -------------------------------------------------------------------------------------


def make_tools() -> ToolRegistry:
    registry = ToolRegistry()

    def add(args: dict[str, Any]) -> dict[str, Any]:
        return {"sum": args["a"] + args["b"]}

    async def aecho(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"echo": args}

    registry.register("add", add)
    registry.register("aecho", aecho, provider="internal")

    @registry.register("slow_async", timeout_s=0.05)
    async def slow_async(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    @registry.register("slow_sync", timeout_s=0.05)
    def slow_sync(args: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.3)
        return {}

    @registry.register("slow_no_default")
    async def slow_no_default(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    @registry.register("limited")
    def limited(args: dict[str, Any]) -> dict[str, Any]:
        raise ToolError(ErrorKind.RATE_LIMITED, "slow down", retry_after_s=1.5)

    @registry.register("bad_args")
    def bad_args(args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("x must be positive")

    @registry.register("boom")
    async def boom(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("kaput")

    @registry.register("not_a_dict")
    def not_a_dict(args: dict[str, Any]) -> dict[str, Any]:
        return [1, 2]  # type: ignore[return-value]

    @registry.register("not_json")
    def not_json(args: dict[str, Any]) -> dict[str, Any]:
        return {"when": object()}

    @registry.register("ctx", wants_context=True)
    def ctx_tool(args: dict[str, Any]) -> dict[str, Any]:
        return {k: args[k] for k in ("_seed", "_attempt", "_step")}

    return registry


TOOLS = ToolExecutor(make_tools())


def test_sync_and_async_tools_succeed() -> None:
    result = success(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "add", "args": {"a": 2, "b": 3}})))
    assert result.output == {"sum": 5}
    assert (result.tool, result.provider) == ("add", "python")
    result = success(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "aecho", "args": {"q": 1}})))
    assert result.output == {"echo": {"q": 1}} and result.provider == "internal"
    assert result.usage.tokens == 0 and result.usage.cost_usd == 0.0


def test_tool_timeouts_use_the_smaller_of_tool_and_deadline() -> None:
    for name in ("slow_async", "slow_sync"):
        started = time.perf_counter()
        f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": name})))
        assert f.kind is ErrorKind.TIMEOUT and f.tool == name
        assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "slow_no_default"}, deadline_s=0.05)))
    assert f.kind is ErrorKind.TIMEOUT
    assert time.perf_counter() - started < 1.0


def test_tool_failures_are_classified() -> None:
    f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "nope"})))
    assert f.kind is ErrorKind.VALIDATION and "nope" in f.message and "add" in f.message
    f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "limited"})))
    assert (f.kind, f.retry_after_s) == (ErrorKind.RATE_LIMITED, 1.5)
    assert "slow down" in f.message
    assert failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "bad_args"}))).kind is ErrorKind.VALIDATION
    f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "add", "args": {"a": 1}})))
    assert f.kind is ErrorKind.CRASH  # KeyError: a bug in the tool
    f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "add", "args": {"a": 1, "b": "x"}})))
    assert f.kind is ErrorKind.VALIDATION  # TypeError
    assert failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "boom"}))).kind is ErrorKind.CRASH
    assert failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "not_a_dict"}))).kind is ErrorKind.VALIDATION
    assert failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "not_json"}))).kind is ErrorKind.VALIDATION
    f = failure(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "add", "args": [1]})))
    assert f.kind is ErrorKind.VALIDATION


def test_context_keys_only_for_tools_that_want_them() -> None:
    inputs: dict[str, Any] = {"tool": "ctx", "args": {"x": 1}}
    result = success(run(TOOLS, ctx_for(StepType.TOOL, inputs, step_id="st", attempt=4, seed=9)))
    assert result.output == {"_seed": 9, "_attempt": 4, "_step": "st"}
    assert inputs["args"] == {"x": 1}  # the step inputs are not mutated
    result = success(run(TOOLS, ctx_for(StepType.TOOL, {"tool": "aecho", "args": {"x": 1}})))
    assert result.output == {"echo": {"x": 1}}


def test_tool_target_and_estimate() -> None:
    step = StepSpec(id="s", type=StepType.TOOL, inputs={"tool": "aecho"})
    assert TOOLS.target(step) == ("aecho", "internal")
    assert TOOLS.estimate(step) == (0, 0.0)


DEMO = ToolExecutor(register_demo_tools(ToolRegistry()))


def test_demo_calculator_is_safe() -> None:
    result = success(
        run(DEMO, ctx_for(StepType.TOOL, {"tool": "calculator", "args": {"expression": "2*(3+4)-1/4"}}))
    )
    assert result.output["result"] == 13.75
    assert safe_eval("-2**3 % 5 // 1") == (-(2**3)) % 5 // 1
    for bad in ("__import__('os').system('true')", "a+1", "2**100000", "1/0", "[1]", "1e308*10", ""):
        f = failure(run(DEMO, ctx_for(StepType.TOOL, {"tool": "calculator", "args": {"expression": bad}})))
        assert f.kind is ErrorKind.VALIDATION, bad


def test_demo_search_and_noop_are_deterministic() -> None:
    inputs = {"tool": "search", "args": {"query": "durable workflows", "k": 2}}
    a = success(run(DEMO, ctx_for(StepType.TOOL, inputs)))
    b = success(run(DEMO, ctx_for(StepType.TOOL, inputs, seed=99)))
    assert a.output == b.output and len(a.output["results"]) == 2
    assert success(run(DEMO, ctx_for(StepType.TOOL, {"tool": "noop"}))).output == {"ok": True, "args": {}}


@pytest.mark.parametrize(
    "tool,args", [("weather", {"city": "Oslo"}), ("crm_lookup", {"customer_id": "c-42"})]
)
def test_demo_flaky_tools_fail_deterministically(tool: str, args: dict[str, Any]) -> None:
    assert success(run(DEMO, ctx_for(StepType.TOOL, {"tool": tool, "args": args}))).output
    flaky = {"tool": tool, "args": {**args, "fail_rate": 0.4}}
    outcomes = [run(DEMO, ctx_for(StepType.TOOL, flaky, attempt=a)) for a in range(1, 301)]
    again = [run(DEMO, ctx_for(StepType.TOOL, flaky, attempt=a)) for a in range(1, 301)]
    kinds = [o.kind if isinstance(o, StepFailure) else None for o in outcomes]
    assert kinds == [o.kind if isinstance(o, StepFailure) else None for o in again]
    failed = [k for k in kinds if k is not None]
    assert 0.3 <= len(failed) / len(kinds) <= 0.5
    assert set(failed) == {ErrorKind.RATE_LIMITED, ErrorKind.HTTP_5XX, ErrorKind.TIMEOUT}
    oks = [o for o in outcomes if isinstance(o, ExecutionResult)]
    assert all(o.output == oks[0].output for o in oks)


# ---- http --------------------------------------------------------------------------------------


def http_executor(handler: Any) -> tuple[HttpExecutor, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HttpExecutor(client), client


def test_http_step_success_and_failures() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/json":
            return httpx.Response(200, json={"echo": request.method, "body": request.content.decode()})
        if request.url.path == "/big":
            return httpx.Response(200, text="é" * 70_000)
        if request.url.path == "/limited":
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "slow"}})
        if request.url.path == "/down":
            return httpx.Response(503, text="unavailable")
        return httpx.Response(404, text="no such page")

    executor, client = http_executor(handler)
    try:
        r = success(
            run(
                executor,
                ctx_for(
                    StepType.HTTP, {"url": "https://api.example.com/json", "method": "post", "json": {"a": 1}}
                ),
            )
        )
        assert r.output == {"status": 200, "json": {"echo": "POST", "body": '{"a":1}'}}
        assert (r.tool, r.provider) == ("api.example.com", "http")
        r = success(run(executor, ctx_for(StepType.HTTP, {"url": "https://api.example.com/big"})))
        assert r.output["truncated"] is True and len(r.output["text"].encode()) <= 64 * 1024
        f = failure(
            run(executor, ctx_for(StepType.HTTP, {"url": "https://api.example.com/limited?token=s3cret"}))
        )
        assert (f.kind, f.retry_after_s) == (ErrorKind.RATE_LIMITED, 3.0) and "s3cret" not in f.message
        f = failure(run(executor, ctx_for(StepType.HTTP, {"url": "https://api.example.com/down"})))
        assert f.kind is ErrorKind.HTTP_5XX
        assert (
            failure(run(executor, ctx_for(StepType.HTTP, {"url": "https://api.example.com/x"}))).kind
            is ErrorKind.HTTP_4XX
        )
        for bad in (
            {"url": "ftp://x/y"},
            {"url": "https://h/", "method": "BREW"},
            {"url": "https://h/", "json": 1, "body": "x"},
        ):
            assert failure(run(executor, ctx_for(StepType.HTTP, bad))).kind is ErrorKind.VALIDATION
    finally:
        asyncio.run(client.aclose())
    step = StepSpec(id="h", type=StepType.HTTP, inputs={"url": "https://api.example.com:8443/v1?x=1"})
    assert executor.target(step) == ("api.example.com", "http") and executor.estimate(step) == (0, 0.0)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": "2.5"}), now.timestamp()) == 2.5
    assert parse_retry_after(httpx.Headers({"Retry-After": later}), now.timestamp()) == 30.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "Retry-After": "9"}), 0) == 1.5
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), 0) is None
    assert parse_retry_after(httpx.Headers({}), 0) is None


# ---- wiring ------------------------------------------------------------------------------------


def test_build_executors_dispatches_llm_steps() -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as client:
            executors = build_executors(
                client=client,
                tools=ToolRegistry(),
                prices=PRICES,
                llm_base_url=None,
                llm_api_key=None,
                sim_sleep=False,
            )
            assert set(executors) == set(StepType)
            llm = executors[StepType.LLM]
            assert isinstance(llm, LLMDispatcher)
            ok = await llm.execute(ctx_for(StepType.LLM, {"model": "sim-large", "prompt": "hello"}))
            assert ok.provider == "sim" and ok.model == "sim-large"
            ok = await llm.execute(
                ctx_for(StepType.LLM, {"provider": "sim", "model": "gpt-4o", "prompt": "hi"})
            )
            assert ok.provider == "sim" and ok.usage.cost_usd == PRICES.cost(
                "gpt-4o", ok.usage.input_tokens, ok.usage.cached_tokens, ok.usage.output_tokens
            )
            with pytest.raises(StepFailure) as info:
                await llm.execute(ctx_for(StepType.LLM, {"model": "gpt-4o", "prompt": "hi"}))
            assert info.value.kind is ErrorKind.VALIDATION
            assert info.value.message.startswith("no LLM endpoint: set FLEETFORGE_LLM_BASE_URL")
            step = StepSpec(
                id="s", type=StepType.LLM, inputs={"model": "gpt-4o", "prompt": "x" * 8, "max_tokens": 10}
            )
            assert llm.target(step) == ("gpt-4o", "openai")
            assert llm.estimate(step) == (12, PRICES.cost("gpt-4o", 2, 0, 10))
            sim_step = StepSpec(id="s", type=StepType.LLM, inputs={"model": "sim-small"})
            assert llm.target(sim_step) == ("sim-small", "sim")

    asyncio.run(go())
