"""LangGraph graphs as agent steps (`inputs.entrypoint`), with every model and tool call a durable unit.

Importing this package does not import LangGraph: `LangGraphExecutor.execute` loads it on first use, so
the core install works without the `langgraph` extra. See docs/agents.md.
"""

from __future__ import annotations

from fleetforge.adapters.executors.langgraph.entry import check_entrypoint, graph_step_types
from fleetforge.adapters.executors.langgraph.executor import LangGraphExecutor

__all__ = ["LangGraphExecutor", "check_entrypoint", "graph_step_types"]
