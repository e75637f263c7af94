"""A small realistic fleet run by the real runtime in-process, for the ClickHouse analytics tests.

Several workflow shapes, workspaces and apps, flaky tools with retries, budget exhaustion, policy
denials and redactions; the simulated LLM never sleeps, so a fleet of ~50 runs takes about a second.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.core.worker import Observer
from fleetforge.domain.models import BudgetLimit

__all__ = ["assert_exact", "derived", "fleet_specs", "open_store", "run_fleet", "truth"]

WORKSPACES = (("acme", "support"), ("acme", "research"), ("globex", "billing"))
TIERS = (("gold", 500), ("standard", 5000))


def fleet_specs(runs: int, seed: int) -> list[dict[str, Any]]:
    """`runs` run specs of mixed shapes, deterministic for `seed`."""
    rng = random.Random(seed)
    specs: list[dict[str, Any]] = []
    for i in range(runs):
        ws, app = WORKSPACES[i % len(WORKSPACES)]
        tier, target = TIERS[rng.randrange(2)]
        slo = {"tier": tier, "queue_target_ms": target}
        shape = rng.randrange(5)
        llm = {"id": "draft", "type": "llm",
               "inputs": {"model": "sim-small", "prompt": f"Summarise ticket {i}", "fail_rate": 0.2,
                          "max_tokens": 64},
               "execution": {"max_attempts": 3, "retry_backoff_ms": 1, "retry_backoff_factor": 1.0},
               "policy": {"slo": slo}}
        weather = {"id": "weather", "type": "tool",
                   "inputs": {"tool": "weather", "args": {"city": "Paris", "fail_rate": 0.35}},
                   "execution": {"max_attempts": 3, "retry_backoff_ms": 1, "retry_backoff_factor": 1.0},
                   "policy": {"slo": slo}}
        crm = {"id": "crm", "type": "tool", "depends_on": ["weather"],
               "inputs": {"tool": "crm_lookup", "args": {"customer_id": i, "fail_rate": 0.3}},
               "execution": {"max_attempts": 2, "retry_backoff_ms": 1, "retry_backoff_factor": 1.0},
               "policy": {"slo": slo}}
        spec: dict[str, Any] = {"workspace": ws, "app": app, "seed": seed * 1000 + i,
                                "labels": {"shape": str(shape)}}
        if shape == 0:
            spec["steps"] = [llm]
        elif shape == 1:
            spec["steps"] = [weather, crm, {**llm, "depends_on": ["crm"]}]
        elif shape == 2:  # PII in the prompt: redacted (a modify decision), calculator after
            spec["steps"] = [{**llm, "inputs": {**llm["inputs"],
                                                "prompt": f"Mail jane.doe{i}@example.com about it"}},
                             {"id": "calc", "type": "tool", "depends_on": ["draft"],
                              "inputs": {"tool": "calculator", "args": {"expression": f"{i} * 3"}}}]
            spec["packs"] = [{"name": "pii_redaction", "mode": "redact"}]
        elif shape == 3:  # tool ACL denies crm_lookup, to the crm step and to the agent's calls of it
            agent = {"id": "agent", "type": "agent", "depends_on": ["weather"],
                     "inputs": {"model": "sim-small", "instructions": f"Help customer {i}.",
                                "tools": ["weather", "crm_lookup"], "max_turns": 4, "sim_tool_turns": 2,
                                "sim_parallel_calls": 2, "fail_rate": 0.2},
                     "execution": {"max_attempts": 3, "retry_backoff_ms": 1, "retry_backoff_factor": 1.0},
                     "policy": {"slo": slo}}
            spec["steps"] = [weather, agent, {**crm, "depends_on": ["agent"]}]
            spec["packs"] = [{"name": "tool_acl", "deny": ["crm_lookup"]}]
        else:  # a tiny budget: the second LLM step exceeds it
            spec["steps"] = [llm, {**llm, "id": "refine", "depends_on": ["draft"]}]
            spec["budget"] = {"tokens": 120}
            spec["packs"] = [{"name": "prompt_injection", "mode": "deny"}]
        specs.append(spec)
    return specs


def open_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    store.migrate()
    return store


async def _run(store: SqliteStore, specs: list[dict[str, Any]], observer: Observer | None,
               cancel_every: int) -> list[str]:
    async with httpx.AsyncClient() as client:
        tools = register_demo_tools(ToolRegistry())
        executors = build_executors(client=client, tools=tools, prices=PriceTable(), llm_base_url=None,
                                    llm_api_key=None, sim_sleep=False)
        config = RuntimeConfig(app_budgets={"globex/billing": BudgetLimit(tokens=2_000, cost=None)})
        runtime = Runtime(store, executors=executors, packs=default_packs(), config=config,
                          observer=observer)
        ids = [runtime.submit(s) for s in specs]
        if cancel_every:
            for rid in ids[::cancel_every]:
                runtime.cancel(rid)
        await runtime.worker("w1", poll_interval_s=0.005).run(until_idle=True)
        return ids


def run_fleet(store: SqliteStore, runs: int = 40, seed: int = 7, *, observer: Observer | None = None,
              cancel_every: int = 0) -> list[str]:
    """Submit and run a fleet to completion on `store`; returns the run ids."""
    return asyncio.run(_run(store, fleet_specs(runs, seed), observer, cancel_every))


def truth(store: SqliteStore) -> dict[str, Any]:
    """Ground truth breakdowns from the state tables (the `--json` summary and its finer aggregates)."""
    from fleetforge.core.summary import summary_from_store

    s = summary_from_store(store)
    return {
        "runs": dict(s["runs"]["by_status"]),
        "attempts": sorted((t, st, int(a), n) for t, st, a, n in store.aggregate("summary_attempts")),
        "budget": sorted((b["workspace"], b["app"], b["tokens_reserved"], b["tokens_used"],
                          round(b["cost_reserved"] * 1_000_000), round(b["cost_used"] * 1_000_000))
                         for b in s["budget"]["by_workspace_app"]),
        "decisions": sorted((p, h, e, n) for p, h, e, n in store.aggregate("summary_decisions")),
        "tools": sorted((t, p, k, n) for t, p, k, n in store.aggregate("summary_tools")),
        "agents": {"steps": s["agents"]["steps"]["by_status"], "turns": s["agents"]["turns"]["by_status"],
                   "calls": {o: n for o, n in s["agents"]["tool_calls"]["by_outcome"].items() if n},
                   "by_tool": s["agents"]["tool_calls"]["by_tool"]},
        "summary": s,
    }


def _agents(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """agent_activity rows (unit, status, tool, units) in the shape of `truth()["agents"]`."""
    out: dict[str, Any] = {"steps": {}, "turns": {}, "calls": {}, "by_tool": {}}
    for unit, status, tool, n in sorted(rows):
        if not int(n):
            continue
        if unit == "call":
            outcome = "ok" if status == "succeeded" else status
            out["calls"][outcome] = out["calls"].get(outcome, 0) + int(n)
            if outcome in ("ok", "failed", "denied"):
                out["by_tool"].setdefault(tool, {"ok": 0, "failed": 0, "denied": 0})[outcome] += int(n)
        else:
            out["steps" if unit == "agent" else "turns"][status] = int(n)
    return out


def derived(analytics: Any, where: str = "1") -> dict[str, Any]:
    """The same breakdowns, read from the six derived tables only (rows matching `where`)."""

    def q(sql: str) -> list[tuple[Any, ...]]:
        return analytics.rows(sql.replace("GROUP BY", f"AND {where} GROUP BY") if "WHERE" in sql
                              else sql.replace("GROUP BY", f"WHERE {where} GROUP BY"))

    return {
        "runs": {s: int(n) for s, n in q("SELECT status, sum(runs) FROM telemetry.run_latency_metrics "
                                         "WHERE status != '' GROUP BY status HAVING sum(runs) > 0")},
        "attempts": sorted((t, s, int(a), int(n)) for t, s, a, n in q(
            "SELECT step_type, status, attempt, sum(steps) FROM telemetry.step_retry_heatmap GROUP BY ALL")),
        "budget": sorted((w, a, int(tr), int(tu), int(cr), int(cu)) for w, a, tr, tu, cr, cu in q(
            "SELECT workspace, app, sum(tokens_reserved), sum(tokens_used), toInt64(sum(cost_reserved) * 1000000), "
            "toInt64(sum(cost_used) * 1000000) FROM telemetry.budget_burndown GROUP BY ALL")),
        "decisions": sorted((p, h, e, int(n)) for p, h, e, n in q(
            "SELECT pack, hook, effect, sum(decisions) FROM telemetry.policy_decision_rates GROUP BY ALL")),
        "tools": sorted((t, p, k, int(n)) for t, p, k, n in analytics.rows(
            "SELECT tool, provider, error_kind, sum(calls) FROM telemetry.tool_error_taxonomy GROUP BY ALL")),
        "agents": _agents(q("SELECT unit, status, tool, sum(units) FROM telemetry.agent_activity GROUP BY ALL")),
    }


def assert_exact(store: SqliteStore, analytics: Any, where: str = "1", hostile_tools: int = 0) -> dict[str, Any]:
    """Every derived breakdown (rows matching `where`) equals the ground truth; returns the truth.

    `tool_error_taxonomy` is fleet-wide (no workspace): `hostile_tools` calls outside the truth are removed.
    """
    want = truth(store)
    got = derived(analytics, where)
    if hostile_tools:
        known = {(t, p, k) for t, p, k, _ in want["tools"]}
        extra = sum(n for t, p, k, n in got["tools"] if (t, p, k) not in known)
        assert extra == hostile_tools, got["tools"]
        got["tools"] = [row for row in got["tools"] if row[:3] in known]
    for key in ("runs", "attempts", "budget", "decisions", "tools", "agents"):
        assert got[key] == want[key], f"{key}: derived {got[key]} != truth {want[key]}"
    return want
