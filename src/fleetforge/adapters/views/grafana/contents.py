"""What the generated Grafana files contain, without the SDK that renders them: the dashboard's panels
(which SQL file, which wrapper, where, which units) and the alert rules (which SQL file, which threshold).

Every panel query embeds the text of one file of `deploy/otel/dashboards/panels/` verbatim. Files that
return `t` (Unix seconds, what the built-in dashboard plots) are wrapped in a small SELECT that turns `t`
into the DateTime column `time` Grafana plots; the wrappers are the templates of `WRAPPERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "DASHBOARD_TITLE",
    "DASHBOARD_UID",
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "FLAKE_SLO",
    "PANELS",
    "RULES",
    "SUCCESS_SLO",
    "WRAPPERS",
    "AlertSpec",
    "PanelSpec",
    "QueryType",
    "panel_sql",
]

DATASOURCE_TYPE: Final = "grafana-clickhouse-datasource"
DATASOURCE_UID: Final = "clickhouse"
QueryType = Literal["table", "timeseries"]

DASHBOARD_TITLE: Final = "FleetForge Observability"
DASHBOARD_UID: Final = "fleetforge-observability"
SUCCESS_SLO: Final = 0.95  # the success-rate SLO line, the same as the provisioned alert's threshold
FLAKE_SLO: Final = 0.05

# name -> template; {sql} is the panel file's text. Each returns what one Grafana panel draws.
WRAPPERS: Final[dict[str, str]] = {
    "raw": "{sql}",
    "success_slo": "SELECT toDateTime(t) AS time, success_rate, slo_rate\nFROM (\n{sql}\n)\nORDER BY time",
    "mttr": "SELECT toDateTime(t) AS time, mttr_s\nFROM (\n{sql}\n)\nORDER BY time",
    "durations": "SELECT toDateTime(t) AS time, p50_s, p95_s\nFROM (\n{sql}\n)\nORDER BY time",
    "retry_matrix": (
        "SELECT concat(step_type, ' / ', status) AS step, toString(attempt) AS attempt, steps\n"
        "FROM (\n{sql}\n)\nORDER BY step, attempt"
    ),
    "time_series": "SELECT toDateTime(t) AS time, * EXCEPT (t)\nFROM (\n{sql}\n)\nORDER BY time",
    "burndown": (
        "SELECT toDateTime(t) AS time, concat(workspace, '/', app) AS budget,\n"
        "       tokens_used_cum AS tokens_used, tokens_limit\nFROM (\n{sql}\n)\nORDER BY time"
    ),
    "exhaustion": (
        "SELECT workspace, app, argMax(tokens_used_cum, t) AS tokens_used, max(tokens_limit) AS "
        "tokens_limit,\n       argMax(cost_used_cum, t) AS cost_used,\n"
        "       nullIf(argMax(exhaustion_t, t), 0) * 1000 AS projected_exhaustion\n"
        "FROM (\n{sql}\n)\nGROUP BY workspace, app\nORDER BY workspace, app"
    ),
}


def panel_sql(panel_text: str, wrapper: str) -> str:
    """The rawSql of a panel: the panel file's text inside its wrapper."""
    return WRAPPERS[wrapper].format(sql=panel_text.strip())


@dataclass(frozen=True, slots=True)
class PanelSpec:
    """One Grafana panel: which file it shows, through which wrapper, where, and how."""

    title: str
    source: str  # file stem in panels/
    wrapper: str
    kind: str  # stat | timeseries | table | heatmap
    grid: tuple[int, int, int, int]  # x, y, w, h
    description: str
    query_type: QueryType = "table"
    units: Mapping[str, str] = field(default_factory=dict)  # column -> Grafana unit


PANELS: Final[tuple[PanelSpec, ...]] = (
    PanelSpec(
        "Fleet overview",
        "overview",
        "raw",
        "stat",
        (0, 0, 24, 4),
        "Runs, run success rate, share of runs within their SLO tier's target, MTTR (mean time from a "
        "step's first failure to its recovery), attempts, retries, tokens, cost and guardrail denies.",
        units={
            "success_rate": "percentunit",
            "slo_rate": "percentunit",
            "mttr_s": "s",
            "cost_used": "currencyUSD",
            "tokens_used": "short",
        },
    ),
    PanelSpec(
        "Run success SLO",
        "run_slo",
        "success_slo",
        "timeseries",
        (0, 4, 12, 8),
        f"Share of finished runs that succeeded, and that succeeded within their tier's queue target. "
        f"The dashed line is the {SUCCESS_SLO:.0%} success SLO the alert rule watches.",
        query_type="timeseries",
        units={"success_rate": "percentunit", "slo_rate": "percentunit"},
    ),
    PanelSpec(
        "Run MTTR",
        "run_slo",
        "mttr",
        "timeseries",
        (12, 4, 6, 8),
        "Mean time to recovery: from a step's first failed attempt to the attempt that succeeded.",
        query_type="timeseries",
        units={"mttr_s": "s"},
    ),
    PanelSpec(
        "Run duration p50 / p95",
        "run_slo",
        "durations",
        "timeseries",
        (18, 4, 6, 8),
        "Run duration quantiles, submission to terminal event.",
        query_type="timeseries",
        units={"p50_s": "s", "p95_s": "s"},
    ),
    PanelSpec(
        "Step retry heatmap",
        "retry_heatmap",
        "retry_matrix",
        "table",
        (0, 12, 12, 9),
        "Terminal attempts by step type and outcome (rows) and attempt number (columns). Agent LLM turns and "
        "tool calls are rows of their own (agent turn, agent tool call).",
        units={},
    ),
    PanelSpec(
        "Step attempts over time",
        "retry_attempts",
        "time_series",
        "heatmap",
        (12, 12, 12, 9),
        "Terminal attempts per interval by attempt number: retries show as heat above attempt 1.",
        query_type="timeseries",
    ),
    PanelSpec(
        "Budget burn-down",
        "budget_burndown",
        "burndown",
        "timeseries",
        (0, 21, 16, 9),
        "Cumulative tokens used per workspace/app against the tightest token limit seen.",
        query_type="timeseries",
    ),
    PanelSpec(
        "Projected budget exhaustion",
        "budget_burndown",
        "exhaustion",
        "table",
        (16, 21, 8, 9),
        "Tokens and cost used so far, and when each workspace/app's token budget runs out at its "
        "current burn rate (empty: no limit, or not on course to reach it).",
        units={"projected_exhaustion": "dateTimeAsIso", "cost_used": "currencyUSD"},
    ),
    PanelSpec(
        "Policy violation bursts",
        "policy_bursts",
        "time_series",
        "timeseries",
        (0, 30, 12, 8),
        "Guardrail decisions per interval by effect; deny bursts stand out in red.",
        query_type="timeseries",
    ),
    PanelSpec(
        "Tool flake rates",
        "tool_flakes",
        "raw",
        "table",
        (12, 30, 12, 8),
        f"Tool and http calls per tool and provider: failures, flake rate (SLO {FLAKE_SLO:.0%}), most "
        "common error kind and p95 latency. Agents' tool calls are counted too; agent_calls says how many "
        "of the calls agents made, agent_denied how many agent calls of the tool a guardrail denied.",
        units={"flake_rate": "percentunit", "p95_ms": "ms"},
    ),
    PanelSpec(
        "Agent turns",
        "agent_turns",
        "time_series",
        "timeseries",
        (0, 38, 12, 8),
        "LLM turns of agent steps per interval: succeeded, failed (for good, or denied), retried turn "
        "attempts, agent steps that finished, and the tokens the turns used.",
        query_type="timeseries",
    ),
    PanelSpec(
        "Agent tool calls by tool and outcome",
        "agent_tool_calls",
        "raw",
        "table",
        (12, 38, 12, 8),
        "Tool calls agents made, per tool: ok, failed (after their retries) and denied (by a guardrail such "
        "as tool_acl, or refused as invalid; the model gets a tool error), with the failure and deny rates.",
        units={"failure_rate": "percentunit", "deny_rate": "percentunit"},
    ),
)


@dataclass(frozen=True, slots=True)
class AlertSpec:
    uid: str
    title: str
    source: str  # file stem in deploy/grafana/alerts/
    column: str  # the value column the threshold applies to
    op: str  # gt | lt
    threshold: float
    range_s: int
    for_: str
    summary: str
    description: str
    panel_id: int  # the dashboard panel showing the same data


RULES: Final[tuple[AlertSpec, ...]] = (
    AlertSpec(
        "fleetforge-run-success-slo",
        "FleetForge run success rate below SLO",
        "run_success_rate",
        "success_rate",
        "lt",
        SUCCESS_SLO,
        3600,
        "5m",
        "Run success rate of {{ $labels.workspace }}/{{ $labels.app }} is below the "
        f"{SUCCESS_SLO:.0%} SLO",
        "{{ humanizePercentage $values.B.Value }} of the runs finished in the last hour succeeded.",
        2,
    ),
    AlertSpec(
        "fleetforge-policy-deny-surge",
        "FleetForge policy denies surging",
        "policy_deny_surge",
        "deny_surge_ratio",
        "gt",
        3.0,
        3600,
        "0s",
        "Guardrail denies surging for {{ $labels.workspace }}/{{ $labels.app }}",
        "Denies in the last 5 minutes are {{ humanize $values.B.Value }}x the hour's 5-minute average "
        "(at least 5 denies).",
        9,
    ),
    AlertSpec(
        "fleetforge-tool-flake-slo",
        "FleetForge tool flake rate above SLO",
        "tool_flake_rate",
        "flake_rate",
        "gt",
        FLAKE_SLO,
        3600,
        "10m",
        f"Tool {{{{ $labels.tool }}}} ({{{{ $labels.provider }}}}) flakes above the {FLAKE_SLO:.0%} SLO",
        "{{ humanizePercentage $values.B.Value }} of its calls failed in the last hour (at least 20 calls).",
        10,
    ),
)
