"""Helpers for the LangGraph tests: the example graph as a spec, an in-process runtime, a node log.

`create_logged_graph` is the example graph (examples/langgraph/react_graph.py) with each node logging
when it starts and ends to LG_NODE_LOG (JSON lines), and, with LG_BLOCK_AT=N, the node of super-step N
sleeping after its work is done and before it returns (so a kill lands between a committed tool call
and the node's checkpoint).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.langgraph import graph_step_types
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.ports.store import Store
from tests.support import need

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "langgraph"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

__all__ = ["EXAMPLE", "create_logged_graph", "graph_spec", "need_langgraph", "node_log", "run_specs"]


def need_langgraph() -> None:
    """Skip locally, fail under CI=true, when the langgraph extra is not installed."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            return False

    missing = [m for m in ("langgraph", "langgraph.checkpoint.sqlite", "langgraph.checkpoint.postgres",
                           "langchain_openai") if not found(m)]
    need(not missing, f"the langgraph extra ({', '.join(missing)}; pip install -e '.[langgraph]')")


def graph_spec(*, model: str = "sim-small", entrypoint: str = "react_graph:create_graph", seed: int = 7,
               packs: list[Any] | None = None, budget: dict[str, Any] | None = None,
               execution: dict[str, Any] | None = None, **inputs: Any) -> dict[str, Any]:
    """A run of the example graph as one agent step `graph`."""
    step: dict[str, Any] = {"id": "graph", "type": "agent", "inputs": {
        "entrypoint": entrypoint, "model": model, "latency_ms": 0,
        "initial_state": {"messages": [{"role": "user", "content": "Order ${{ inputs.order }} arrived broken."}]},
        "config": {"recursion_limit": 20}, "output": "messages", **inputs}}
    if packs:
        step["policy"] = {"packs": packs}
    if execution:
        step["execution"] = execution
    spec: dict[str, Any] = {"workspace": "lg", "app": "react", "seed": seed, "inputs": {"order": "A-1001"},
                            "steps": [step]}
    if budget:
        spec["budget"] = budget
    return spec


def run_specs(store: Store, specs: list[dict[str, Any]], *, base_url: str | None = None) -> list[str]:
    """Submit `specs` and work until every run ended, in this process; returns the run ids."""

    async def go() -> list[str]:
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()),
                                        prices=PriceTable(), llm_base_url=base_url, llm_api_key="sk-test",
                                        sim_sleep=False)
            rt = Runtime(store, executors=executors, packs=default_packs(), step_types=graph_step_types())
            ids = [rt.submit(s) for s in specs]
            await rt.worker("w", poll_interval_s=0.01).run(until_idle=True)
            return ids

    return asyncio.run(go())


def node_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


Node = Callable[[Any], Awaitable[dict[str, Any]]]


def _write(log: Path, entry: dict[str, Any]) -> None:
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\n")


async def _logged(name: str, step: int, work: Awaitable[Any]) -> Any:
    """Run a node's `work` between a start and an end line; block after it at super-step LG_BLOCK_AT."""
    log = Path(os.environ["LG_NODE_LOG"])
    entry = {"node": name, "step": step, "pid": os.getpid()}
    _write(log, {**entry, "event": "start"})
    out = await work
    if step == int(os.environ.get("LG_BLOCK_AT", "0")):
        _write(log, {**entry, "event": "blocked"})
        await asyncio.sleep(120)
    _write(log, {**entry, "event": "end"})
    return out


def create_logged_graph(model: Any) -> Any:
    """The example graph with every node logged (see module doc)."""
    from langgraph.prebuilt import ToolNode
    from react_graph import TOOLS, build

    class LoggedToolNode(ToolNode):
        async def _afunc(self, input: Any, config: Any, runtime: Any) -> Any:
            return await _logged("tools", len(input["messages"]), super()._afunc(input, config, runtime))

    def wrap(name: str, fn: Node) -> Node:
        async def node(state: Any) -> dict[str, Any]:
            return await _logged(name, len(state["messages"]), fn(state))  # type: ignore[no-any-return]
        return node

    return build(model, wrap, LoggedToolNode(TOOLS))


def create_leaky_graph(model: Any) -> Any:
    """The example graph whose agent node also tells the model an email address (never put in the state)."""
    from react_graph import build

    def wrap(name: str, fn: Node) -> Node:
        async def node(state: Any) -> dict[str, Any]:
            extra = {"role": "user", "content": "Reach me at ada.lovelace@example.com"}
            return await fn({"messages": [*state["messages"], extra]})
        return node

    return build(model, wrap)


def create_sync_compiled_graph(model: Any) -> Any:
    """The example graph written with a sync model node and returned compiled (LangGraph's prebuilt router)."""
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition
    from react_graph import TOOLS

    bound = model.bind_tools(TOOLS)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    builder: Any = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(TOOLS))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile()


def create_own_model_graph() -> Any:
    """The example graph on a chat model it makes itself (no `model` parameter): FleetForge refuses it."""
    from react_graph import build

    from fleetforge.adapters.executors.langgraph.chat import SimChatModel

    return build(SimChatModel(model_name="sim-small"))
