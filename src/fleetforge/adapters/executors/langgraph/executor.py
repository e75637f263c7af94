"""The executor of graph steps: an `agent` step whose inputs name a LangGraph `entrypoint`."""

from __future__ import annotations

import asyncio
import importlib

from fleetforge.core.pricing import PriceTable
from fleetforge.domain.models import ErrorKind, StepSpec
from fleetforge.domain.steptypes import GRAPH_ENTRYPOINT
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure

__all__ = ["LangGraphExecutor"]


class LangGraphExecutor:
    """Runs a graph in this worker, its model and tool calls as units (see docs/agents.md).

    `llm_base_url`/`llm_api_key`: the OpenAI-compatible endpoint of non-`sim-*` models (through
    langchain-openai's ChatOpenAI); the key is only sent to that URL, never to a step's `base_url`."""

    def __init__(self, prices: PriceTable, *, llm_base_url: str | None, llm_api_key: str | None,
                 sim_sleep: bool = True) -> None:
        self.prices = prices
        self.llm_base_url = llm_base_url
        self.llm_api_key = llm_api_key
        self.sim_sleep = sim_sleep

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """Nothing: each model call reserves for itself."""
        return 0, 0.0

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(entrypoint, "langgraph")."""
        return str(step.inputs.get(GRAPH_ENTRYPOINT, "")), "langgraph"

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        if ctx.units is None:
            raise StepFailure(ErrorKind.VALIDATION, "a graph step needs a worker that records its units",
                              provider="langgraph")
        try:  # a first import takes seconds: off the worker's loop, which keeps extending leases meanwhile
            run = await asyncio.to_thread(importlib.import_module, "fleetforge.adapters.executors.langgraph.run")
        except ImportError as exc:
            raise StepFailure(ErrorKind.VALIDATION, f"LangGraph is not installed ({exc.name}): "
                              "pip install 'fleetforge[langgraph]'", provider="langgraph") from None
        result: ExecutionResult = await run.run_graph(self, ctx, ctx.units)
        return result
