"""A ReAct-style LangGraph graph with two tools, run by FleetForge as an `agent` step (docs/agents.md).

Nothing here knows about FleetForge: `create_graph(model)` is an ordinary graph factory. FleetForge passes
the chat model (the simulator for `sim-*` models, else langchain-openai's ChatOpenAI against an
OpenAI-compatible endpoint) wrapped so that each call is budgeted, guarded and recorded, and runs the
graph's ToolNode calls through the same guardrails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up by its id.

    Args:
        order_id: The order's id, such as "A-1001".
    """
    return {"order_id": order_id, "status": "delivered", "total": 42.5}


@tool
def refund(order_id: str, amount: float) -> dict[str, Any]:
    """Refund part or all of an order.

    Args:
        order_id: The order's id.
        amount: How much to refund, in USD.
    """
    return {"order_id": order_id, "refunded": amount}


TOOLS = [lookup_order, refund]
Node = Callable[[MessagesState], Awaitable[dict[str, Any]]]


def build(model: BaseChatModel, wrap: Callable[[str, Node], Node] | None = None,
          tool_node: ToolNode | None = None) -> StateGraph[Any]:
    """The graph: `agent` calls the model with both tools; `tools` runs the calls it asks for; repeat.

    `wrap` and `tool_node` let a caller observe the nodes (the tests log each one)."""
    bound = model.bind_tools(TOOLS)

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if getattr(last, "tool_calls", None) else END

    builder: StateGraph[Any] = StateGraph(MessagesState)
    builder.add_node("agent", wrap("agent", agent) if wrap else agent)
    builder.add_node("tools", tool_node or ToolNode(TOOLS))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", END])
    builder.add_edge("tools", "agent")
    return builder


def create_graph(model: BaseChatModel) -> StateGraph[Any]:
    """The entrypoint a FleetForge spec names: `react_graph:create_graph`."""
    return build(model)
