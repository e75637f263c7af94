"""The LangGraph row of bench/agent: the example graph (examples/langgraph) as a FleetForge step, beside the
same graph invoked directly (the simulator chat model, no checkpointer, no FleetForge around it).

Figures per call (a model call or a tool call): the governance time, measured around the unit calls the
step makes (reserve + guardrails + ledger + events before, reconciliation + post-hooks after), p50 and p95
for model calls and tool calls apart; and the whole step's added wall time per call (claim, checkpoints
after each super-step, completion included) against the direct run. Zero simulated latency.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.langgraph import graph_step_types
from fleetforge.adapters.executors.sim_llm import SimulatedLLM
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.core import held_units
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.ports.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "langgraph"))
TIMES: dict[str, list[float]] = defaultdict(list)


def _timed(kind: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(self, *args, **kwargs)
        finally:
            unit = args[0] if args and hasattr(args[0], "step_id") else None
            which = kind if unit is None else ("tool" if ".c" in unit.step_id else "model")
            TIMES[which].append(time.perf_counter() - started)
    return wrapper


held_units.HeldUnits.turn = _timed("model", held_units.HeldUnits.turn)  # type: ignore[method-assign]
held_units.HeldUnits.call = _timed("tool", held_units.HeldUnits.call)  # type: ignore[method-assign]
held_units.HeldUnits.finish = _timed("", held_units.HeldUnits.finish)  # type: ignore[method-assign]


def _inputs(turns: int) -> dict[str, Any]:
    return {"entrypoint": "react_graph:create_graph", "model": "sim-small", "latency_ms": 0,
            "sim_tool_turns": turns - 1, "config": {"recursion_limit": 4 * turns},
            "initial_state": {"messages": [{"role": "user", "content": "Benchmark the refund."}]}}


async def direct(turns: int, seed: int) -> float:
    """Seconds for the graph invoked directly."""
    from react_graph import build

    from fleetforge.adapters.executors.langgraph.chat import SimChatModel

    model = SimChatModel(model_name="sim-small", seed=seed, knobs={"latency_ms": 0, "sim_tool_turns": turns - 1},
                         sim=SimulatedLLM(PriceTable(), sleep=False))
    graph = build(model).compile()
    started = time.perf_counter()
    await graph.ainvoke(_inputs(turns)["initial_state"], {"recursion_limit": 4 * turns})
    return time.perf_counter() - started


async def durable(store: Store, runs: int, turns: int) -> list[float]:
    out = []
    async with httpx.AsyncClient() as client:
        executors = build_executors(client=client, tools=ToolRegistry(), prices=PriceTable(), llm_base_url=None,
                                    llm_api_key=None, sim_sleep=False)
        rt = Runtime(store, executors=executors, packs=default_packs(), step_types=graph_step_types())
        for i in range(runs):
            started = time.perf_counter()
            rt.submit({"seed": i, "steps": [{"id": "g", "type": "agent", "inputs": _inputs(turns),
                                             "policy": {"packs": [{"name": "tool_acl", "allow": ["*"]}]}}]})
            await rt.worker(f"bench-{i}", poll_interval_s=0.05).run(until_idle=True)
            out.append(time.perf_counter() - started)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def report(name: str, store: Store, runs: int, turns: int) -> None:
    calls = turns + (turns - 1)
    asyncio.run(durable(store, 3, turns))  # warm up (imports, first checkpoints)
    asyncio.run(direct(turns, 0))
    TIMES.clear()
    durable_s = asyncio.run(durable(store, runs, turns))
    direct_s = [asyncio.run(direct(turns, i)) for i in range(runs)]
    added = [(d - p) / calls for d, p in zip(durable_s, direct_s, strict=True)]
    print(f"{name:10s} langgraph calls/run={calls}  direct {statistics.median(direct_s) / calls * 1e3:.3f} ms/call  "
          f"step {statistics.median(durable_s) / calls * 1e3:.3f} ms/call  added p50 {_p(added, 0.5):.3f} ms  "
          f"governance per model call p50 {_p(TIMES['model'], 0.5):.3f} ms p95 {_p(TIMES['model'], 0.95):.3f} ms, "
          f"per tool call p50 {_p(TIMES['tool'], 0.5):.3f} ms p95 {_p(TIMES['tool'], 0.95):.3f} ms")
