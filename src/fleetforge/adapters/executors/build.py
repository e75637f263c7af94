"""Wires one Executor per step type; `llm` steps go to the simulator or an OpenAI-compatible server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

import httpx

from fleetforge.adapters.executors.http_step import HttpExecutor
from fleetforge.adapters.executors.langgraph import LangGraphExecutor
from fleetforge.adapters.executors.openai_llm import OpenAICompatibleLLM
from fleetforge.adapters.executors.sim_llm import SimulatedLLM
from fleetforge.adapters.executors.tools import ToolExecutor, ToolRegistry
from fleetforge.core.agent import AgentExecutor
from fleetforge.core.pricing import PriceTable
from fleetforge.domain.models import ErrorKind, StepSpec, StepType
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor, StepFailure

__all__ = ["NO_ENDPOINT_MESSAGE", "LLMDispatcher", "build_executors", "is_simulated"]

NO_ENDPOINT_MESSAGE: Final = (
    "no LLM endpoint: set FLEETFORGE_LLM_BASE_URL (an OpenAI-compatible base URL such as "
    "https://api.openai.com/v1), or the step's inputs.base_url, or use a sim-* model"
)
DEFAULT_PROVIDER: Final = "openai"


def is_simulated(inputs: dict[str, Any]) -> bool:
    """True when an `llm` step asks for the simulator: provider "sim" or a `sim-*` model."""
    model = inputs.get("model")
    return inputs.get("provider") == "sim" or (isinstance(model, str) and model.startswith("sim-"))


class LLMDispatcher:
    """The `llm` executor: SimulatedLLM for simulated steps, else an OpenAI-compatible endpoint.

    `inputs.base_url` overrides the configured base URL; the configured API key is only ever
    sent to the configured base URL, so a run spec cannot redirect it elsewhere.
    `inputs.provider` (default "openai") labels the provider in events and metrics.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        prices: PriceTable,
        base_url: str | None,
        api_key: str | None,
        sim: SimulatedLLM,
        tools: ToolRegistry | None = None,
    ) -> None:
        self._client = client
        self._prices = prices
        self._base_url = base_url.rstrip("/") if base_url else None
        self._api_key = api_key
        self._sim = sim
        self._tools = tools
        self._estimator = OpenAICompatibleLLM(client, "", None, prices)

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """The chosen executor's estimate."""
        if is_simulated(step.inputs):
            return self._sim.estimate(step)
        return self._estimator.estimate(step)

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(model, provider) of the chosen executor."""
        if is_simulated(step.inputs):
            return self._sim.target(step)
        model = step.inputs.get("model")
        return (model if isinstance(model, str) else ""), _provider(step.inputs)

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        if isinstance(ctx.inputs.get("tools"), list):
            ctx = replace(ctx, inputs={**ctx.inputs, "tools": self._functions(ctx.inputs)})
        if is_simulated(ctx.inputs):
            return await self._sim.execute(ctx)
        return await self._remote_for(ctx.inputs).execute(ctx)

    def _functions(self, inputs: dict[str, Any]) -> list[Any]:
        """`tools` given by name (an agent's turn) as the registry's function definitions."""
        out: list[Any] = []
        for name in inputs["tools"]:
            tool = self._tools.get(name) if isinstance(name, str) and self._tools is not None else None
            if tool is not None:
                out.append(tool.function())
            elif isinstance(name, dict):
                out.append(name)
            else:
                known = ", ".join(self._tools.names()) if self._tools is not None else "none registered"
                raise StepFailure(ErrorKind.VALIDATION, f"tools: got {name!r:.60}, expected a registered tool: "
                                  f"{known}", tool=str(inputs.get("model", "")), provider=_provider(inputs))
        return out

    def _remote_for(self, inputs: dict[str, Any]) -> OpenAICompatibleLLM:
        provider = _provider(inputs)
        override = inputs.get("base_url")
        if override is not None and (not isinstance(override, str) or not override):
            raise StepFailure(
                ErrorKind.VALIDATION,
                f"base_url: got {override!r:.80}, expected a URL",
                tool=str(inputs.get("model", "")),
                provider=provider,
            )
        base_url = override.rstrip("/") if isinstance(override, str) else self._base_url
        if base_url is None:
            raise StepFailure(
                ErrorKind.VALIDATION,
                NO_ENDPOINT_MESSAGE,
                tool=str(inputs.get("model", "")),
                provider=provider,
            )
        api_key = self._api_key if base_url == self._base_url else None
        return OpenAICompatibleLLM(self._client, base_url, api_key, self._prices, provider)


def _provider(inputs: dict[str, Any]) -> str:
    provider = inputs.get("provider")
    return provider if isinstance(provider, str) and provider else DEFAULT_PROVIDER


def build_executors(
    *,
    client: httpx.AsyncClient,
    tools: ToolRegistry,
    prices: PriceTable,
    llm_base_url: str | None,
    llm_api_key: str | None,
    sim_sleep: bool = True,
) -> dict[str, Executor]:
    """One executor per step type, sharing `client` and `prices`."""
    sim = SimulatedLLM(prices, sleep=sim_sleep)
    return {
        StepType.LLM: LLMDispatcher(
            client=client, prices=prices, base_url=llm_base_url, api_key=llm_api_key, sim=sim, tools=tools
        ),
        StepType.TOOL: ToolExecutor(tools),
        StepType.HTTP: HttpExecutor(client),
        StepType.AGENT: AgentExecutor(graph=LangGraphExecutor(prices, llm_base_url=llm_base_url,
                                                             llm_api_key=llm_api_key, sim_sleep=sim_sleep)),
    }
