"""Build stores, executors and runtimes from command-line options and env vars."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import httpx

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.langgraph import graph_step_types
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.core.worker import Observer
from fleetforge.domain import envparse
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.models import BudgetLimit
from fleetforge.domain.money import MAX_TOKENS, MAX_USD
from fleetforge.ports.store import Store

__all__ = ["DEFAULT_DATA_DIR", "build_runtime", "config_from_env", "store_for", "tools_registry"]

DEFAULT_DATA_DIR = Path(".fleetforge")


def store_for(store_url: str | None, data_dir: Path | None) -> Store:
    """The store named by `store_url`, else the embedded SQLite store under `data_dir`; migrated."""
    from fleetforge.adapters.stores.factory import open_store

    url = store_url or f"sqlite:///{(data_dir or DEFAULT_DATA_DIR) / 'state.db'}"
    store = open_store(url)
    store.migrate()
    return store


def _int_env(name: str, hi: int = MAX_TOKENS) -> int | None:
    raw = envparse.value(os.environ, name)
    return None if raw is None else envparse.integer(raw, name, lo=0, hi=hi)


_YEAR_MS: Final = 365 * 86_400_000
_BUDGET_BOUNDS: Final = f"tokens from 0 to {MAX_TOKENS} and cost from 0 to {MAX_USD:.0f} USD"


def _app_budgets(raw: str) -> dict[str, BudgetLimit]:
    """Parse `ws/app=tokens:N,cost:X;ws2/app2=...` (FLEETFORGE_APP_BUDGETS)."""
    out: dict[str, BudgetLimit] = {}
    for item in filter(None, (p.strip() for p in raw.split(";"))):
        key, _, limits = item.partition("=")
        shown = f"{item!r:.120}"
        values: dict[str, float] = {}
        try:
            for part in limits.split(","):
                name, _, num = part.partition(":")
                if name.strip() not in ("tokens", "cost"):
                    raise ValueError(name)
                values[name.strip()] = _budget_number(num)
        except ValueError:
            raise ConfigError(f"FLEETFORGE_APP_BUDGETS: got {shown}, expected "
                              "'workspace/app=tokens:N,cost:USD' items separated by ';'") from None
        if "/" not in key or any(v < 0 for v in values.values()):
            raise ConfigError(f"FLEETFORGE_APP_BUDGETS: got {shown}, expected 'workspace/app=...' "
                              "with limits >= 0")
        tokens, cost = values.get("tokens"), values.get("cost")
        if (tokens is not None and (tokens > MAX_TOKENS or tokens != int(tokens))) \
                or (cost is not None and not cost <= MAX_USD):
            raise ConfigError(f"FLEETFORGE_APP_BUDGETS: got {shown}, expected {_BUDGET_BOUNDS}")
        out[key.strip()] = BudgetLimit(tokens=None if tokens is None else int(tokens), cost=cost)
    return out


def _budget_number(text: str) -> float:
    """A limit as written: an exact integer, else a float (an infinity or NaN is out of every bound)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)
        return math.inf if math.isnan(value) else value


def config_from_env(**overrides: object) -> RuntimeConfig:
    """RuntimeConfig from FLEETFORGE_LEASE_MS, FLEETFORGE_MAX_INFLIGHT_TOKENS/COST, FLEETFORGE_APP_BUDGETS."""
    cost_raw = envparse.value(os.environ, "FLEETFORGE_MAX_INFLIGHT_COST")
    cost = None if cost_raw is None else envparse.number(cost_raw, "FLEETFORGE_MAX_INFLIGHT_COST", lo=0,
                                                         hi=MAX_USD, unit="USD")
    lease_raw = envparse.value(os.environ, "FLEETFORGE_LEASE_MS")
    lease_ms = 30_000 if lease_raw is None else envparse.integer(lease_raw, "FLEETFORGE_LEASE_MS", lo=1, hi=_YEAR_MS,
                                                                  unit="milliseconds", default=30_000)
    kwargs: dict[str, object] = {
        "lease_ms": lease_ms,
        "max_inflight_tokens": _int_env("FLEETFORGE_MAX_INFLIGHT_TOKENS"),
        "max_inflight_cost": cost,
        "app_budgets": _app_budgets(envparse.value(os.environ, "FLEETFORGE_APP_BUDGETS") or ""),
    }
    kwargs.update(overrides)
    return RuntimeConfig(**kwargs)  # type: ignore[arg-type]


def tools_registry(plugins: Sequence[str] = ()) -> ToolRegistry:
    """The demo tools, then the operator's tools from `module:function` plugins (see toolplugins)."""
    registry = register_demo_tools(ToolRegistry())
    if plugins:
        from fleetforge.adapters.cli.toolplugins import load_tool_plugins

        load_tool_plugins(plugins, registry)
    return registry


def build_runtime(store: Store, client: httpx.AsyncClient, *, config: RuntimeConfig | None = None,
                  observer: Observer | None = None, sim_sleep: bool = True,
                  tools: ToolRegistry | None = None) -> Runtime:
    """A runtime with the standard executors (LLM endpoint from FLEETFORGE_LLM_BASE_URL/_API_KEY)."""
    executors = build_executors(
        client=client, tools=tools or tools_registry(), prices=PriceTable(),
        llm_base_url=os.environ.get("FLEETFORGE_LLM_BASE_URL") or None,
        llm_api_key=os.environ.get("FLEETFORGE_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
        sim_sleep=sim_sleep)
    return Runtime(store, executors=executors, packs=default_packs(), config=config or config_from_env(),
                   observer=observer, step_types=graph_step_types())
