"""Build stores, executors and runtimes from command-line options and env vars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import httpx

from fleetforge.adapters.executors.registry import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.core.worker import Observer
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.models import BudgetLimit
from fleetforge.ports.store import Store

__all__ = ["DEFAULT_DATA_DIR", "build_runtime", "config_from_env", "store_for", "tools_registry"]

DEFAULT_DATA_DIR = Path(".fleetforge")


def store_for(store_url: str | None, data_dir: Path | None) -> Store:
    """The store named by `store_url`, else the embedded SQLite store under `data_dir`; migrated."""
    from fleetforge.adapters.stores import open_store

    url = store_url or f"sqlite:///{(data_dir or DEFAULT_DATA_DIR) / 'state.db'}"
    store = open_store(url)
    store.migrate()
    return store


def _int_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: got {raw!r}, expected a whole number") from None
    if value < 0:
        raise ConfigError(f"{name}: got {raw!r}, expected a number >= 0")
    return value


def _app_budgets(raw: str) -> dict[str, BudgetLimit]:
    """Parse `ws/app=tokens:N,cost:X;ws2/app2=...` (FLEETFORGE_APP_BUDGETS)."""
    out: dict[str, BudgetLimit] = {}
    for item in filter(None, (p.strip() for p in raw.split(";"))):
        key, _, limits = item.partition("=")
        values: dict[str, float] = {}
        try:
            for part in limits.split(","):
                name, _, num = part.partition(":")
                if name.strip() not in ("tokens", "cost"):
                    raise ValueError(name)
                values[name.strip()] = float(num)
        except ValueError:
            raise ConfigError(f"FLEETFORGE_APP_BUDGETS: got {item!r}, expected "
                              "'workspace/app=tokens:N,cost:USD' items separated by ';'") from None
        if "/" not in key or any(v < 0 for v in values.values()):
            raise ConfigError(f"FLEETFORGE_APP_BUDGETS: got {item!r}, expected 'workspace/app=...' "
                              "with limits >= 0")
        tokens = values.get("tokens")
        out[key.strip()] = BudgetLimit(tokens=None if tokens is None else int(tokens), cost=values.get("cost"))
    return out


def config_from_env(**overrides: object) -> RuntimeConfig:
    """RuntimeConfig from FLEETFORGE_LEASE_MS, FLEETFORGE_MAX_INFLIGHT_TOKENS/COST, FLEETFORGE_APP_BUDGETS."""
    cost_raw = os.environ.get("FLEETFORGE_MAX_INFLIGHT_COST")
    try:
        cost = float(cost_raw) if cost_raw else None
    except ValueError:
        raise ConfigError(f"FLEETFORGE_MAX_INFLIGHT_COST: got {cost_raw!r}, expected USD as a number") from None
    if cost is not None and not 0 <= cost < float("inf"):
        raise ConfigError(f"FLEETFORGE_MAX_INFLIGHT_COST: got {cost_raw!r}, expected a finite number of USD >= 0")
    lease_ms = _int_env("FLEETFORGE_LEASE_MS")
    if lease_ms == 0:
        raise ConfigError("FLEETFORGE_LEASE_MS: got '0', expected milliseconds >= 1 (default 30000)")
    kwargs: dict[str, object] = {
        "lease_ms": lease_ms or 30_000,
        "max_inflight_tokens": _int_env("FLEETFORGE_MAX_INFLIGHT_TOKENS"),
        "max_inflight_cost": cost,
        "app_budgets": _app_budgets(os.environ.get("FLEETFORGE_APP_BUDGETS", "")),
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
                   observer=observer)
