"""The ground-truth summary of what the runtime did, from the state tables or from the outbox.

Both computations must agree; analytics and dashboards are held against them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from fleetforge.domain.envelope import Envelope
from fleetforge.domain.money import to_micros, to_usd
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.store import Store

__all__ = ["summary_from_events", "summary_from_store"]


def _sorted(c: Counter[str] | dict[str, int]) -> dict[str, int]:
    return {k: int(c[k]) for k in sorted(c) if c[k]}


def _budget(rows: dict[tuple[str, str], list[int]]) -> dict[str, Any]:
    totals = [sum(v[i] for v in rows.values()) for i in range(4)]
    return {
        "tokens_reserved": totals[0], "tokens_used": totals[1],
        "cost_reserved": to_usd(totals[2]), "cost_used": to_usd(totals[3]),
        "by_workspace_app": [
            {"workspace": ws, "app": app, "tokens_reserved": v[0], "tokens_used": v[1],
             "cost_reserved": to_usd(v[2]), "cost_used": to_usd(v[3])}
            for (ws, app), v in sorted(rows.items())
        ],
    }


_OUTCOME = {"succeeded": "ok"}
_DECIDED = ("ok", "failed", "denied")


def _agents(units: Counter[tuple[str, str, str]]) -> dict[str, Any]:
    """Agent steps, their LLM turns and their tool calls, from (role, status, tool) counts.

    role: agent | turn | call. A tool call's outcome is ok (succeeded), failed (for good) or denied
    (refused by a guardrail or as invalid), else its status; `by_tool` counts the first three."""
    by: dict[str, Counter[str]] = {"agent": Counter(), "turn": Counter(), "call": Counter()}
    by_tool: dict[str, Counter[str]] = defaultdict(Counter)
    for (role, status, tool), n in units.items():
        if role == "call":
            outcome = _OUTCOME.get(status, status)
            by["call"][outcome] += n
            if outcome in _DECIDED:
                by_tool[tool][outcome] += n
        else:
            by[role][status] += n
    calls = by["call"]
    return {
        "steps": {"total": sum(by["agent"].values()), "by_status": _sorted(by["agent"])},
        "turns": {"total": sum(by["turn"].values()), "by_status": _sorted(by["turn"])},
        "tool_calls": {"total": sum(calls.values()),
                       "by_outcome": {**{o: calls.get(o, 0) for o in _DECIDED}, **_sorted(calls)},
                       "by_tool": {t: {o: by_tool[t].get(o, 0) for o in _DECIDED} for t in sorted(by_tool)}},
    }


def _assemble(runs: Counter[str], steps: Counter[str], attempts: int, retries: int,
              decisions: Counter[tuple[str, str]], budget: dict[tuple[str, str], list[int]],
              tools: Counter[str], tool_total: int, agents: Counter[tuple[str, str, str]]) -> dict[str, Any]:
    by_effect: Counter[str] = Counter()
    by_pack: Counter[str] = Counter()
    for (pack, effect), n in decisions.items():
        by_effect[effect] += n
        by_pack[pack] += n
    return {
        "runs": {"total": sum(runs.values()), "by_status": _sorted(runs)},
        "steps": {"total": sum(steps.values()), "by_status": _sorted(steps), "attempts": attempts,
                  "retries": retries},
        "policy_decisions": {"total": sum(decisions.values()),
                             "by_effect": {e: by_effect.get(e, 0) for e in ("allow", "deny", "modify")},
                             "by_pack": _sorted(by_pack)},
        "budget": _budget(budget),
        "tool_calls": {"total": tool_total, "failed": sum(tools.values()), "by_error_kind": _sorted(tools)},
        "agents": _agents(agents),
    }


def summary_from_store(store: Store) -> dict[str, Any]:
    """Ground truth from the state tables (runs, steps, attempts ledger, policy decisions)."""
    runs = Counter({s: n for s, n in store.aggregate("summary_runs")})
    steps = Counter({s: n for s, n in store.aggregate("summary_steps")})
    attempts = retries = 0
    for _type, _status, attempt, n in store.aggregate("summary_attempts"):
        attempts += n
        retries += n if attempt > 1 else 0
    decisions: Counter[tuple[str, str]] = Counter()
    for pack, _hook, effect, n in store.aggregate("summary_decisions"):
        decisions[(pack, effect)] += n
    budget = {(ws, app): [int(a or 0), int(b or 0), int(c or 0), int(d or 0)]
              for ws, app, a, b, c, d in store.aggregate("summary_budget")}
    tools: Counter[str] = Counter()
    total = 0
    for _tool, _provider, kind, n in store.aggregate("summary_tools"):
        total += n
        if kind:
            tools[kind] += n
    agents = Counter({(role, status, tool or ""): n for role, status, tool, n in store.aggregate("summary_agents")})
    return _assemble(runs, steps, attempts, retries, decisions, budget, tools, total, agents)


def summary_from_events(events: Iterable[Envelope | str]) -> dict[str, Any]:
    """The same summary, derived only from outbox envelopes (the latest status per run and step)."""
    run_status: dict[str, str] = {}
    step_status: dict[tuple[str, str], str] = {}
    attempts = retries = 0
    decisions: Counter[tuple[str, str]] = Counter()
    budget: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    tools: Counter[str] = Counter()
    tool_total = 0
    roles: dict[tuple[str, str], str] = {}  # agent units and agent steps: agent | turn | call
    unit_tools: dict[tuple[str, str], str] = {}
    terminal_step = {K.STEP_SUCCEEDED: "succeeded", K.STEP_DENIED: "denied"}
    for e in events:
        ev = Envelope.from_dict(json.loads(e)) if isinstance(e, str) else e
        p, key = ev.payload, (ev.run_id, ev.step_id or "")
        if ev.step_id is not None and key not in roles:
            if p.get("step_type") == "agent":
                roles[key] = "agent"
            elif p.get("agent"):
                roles[key] = "turn" if p.get("step_type") == "llm" else "call"
        if ev.kind in (K.TOOL_CALL, K.STEP_DENIED, K.STEP_REUSED) and roles.get(key) == "call" and p.get("tool"):
            unit_tools.setdefault(key, p["tool"])  # the tool the model asked for
        if ev.kind in (K.RUN_SUBMITTED, K.RUN_STARTED, K.RUN_SUCCEEDED, K.RUN_FAILED, K.RUN_CANCELED,
                       K.RUN_PAUSED, K.RUN_RESUMED):
            run_status[ev.run_id] = p["status"]
        elif ev.kind is K.STEP_QUEUED:
            step_status[key] = "queued"
        elif ev.kind is K.APPROVAL_REQUESTED:
            step_status[key] = "waiting_approval"
        elif ev.kind is K.STEP_STARTED:
            step_status[key] = "running"
        elif ev.kind in terminal_step:
            step_status[key] = terminal_step[ev.kind]
        elif ev.kind is K.STEP_FAILED:
            step_status[key] = "failed" if p["final"] else "queued"
        elif ev.kind is K.STEP_SKIPPED:
            step_status[key] = "canceled" if p["reason"] == "run canceled" else "skipped"
        elif ev.kind is K.STEP_REUSED:  # a fork's step taken from the record: a step, never an attempt
            step_status[key] = p["status"]
        if ev.kind in (K.STEP_SUCCEEDED, K.STEP_FAILED, K.STEP_DENIED):
            attempts += 1
            retries += ev.attempt > 1
        elif ev.kind is K.POLICY_DECISION:
            decisions[(p["pack"], p["effect"])] += 1
        elif ev.kind is K.BUDGET_RESERVED:
            v = budget[(ev.workspace, ev.app)]
            v[0] += p["tokens"]
            v[2] += to_micros(p["cost_usd"])
        elif ev.kind is K.BUDGET_RECONCILED:
            v = budget[(ev.workspace, ev.app)]
            v[1] += p["tokens_used"]
            v[3] += to_micros(p["cost_used_usd"])
        elif ev.kind is K.TOOL_CALL:
            tool_total += 1
            if not p["ok"]:
                tools[p["error_kind"]] += 1
    agents = Counter((role, step_status[key], unit_tools.get(key, "") if role == "call" else "")
                     for key, role in roles.items() if key in step_status)
    return _assemble(Counter(run_status.values()), Counter(step_status.values()), attempts, retries,
                     decisions, dict(budget), tools, tool_total, agents)
