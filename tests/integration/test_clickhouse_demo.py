"""`fleetforge demo --json` against what it streamed into embedded ClickHouse, and `fleetforge sql` output.

The demo's JSON is the ground truth; the derived tables, read back through the `sql` command, must
equal it exactly for several seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)


def fleetforge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETFORGE_CLICKHOUSE_URL": ""}
    done = subprocess.run([sys.executable, "-c", "from fleetforge.adapters.cli.main import main; main()", *args],
                          capture_output=True,
                          text=True, timeout=240, env=env)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def sql(data_dir: Path, query: str) -> list[dict[str, Any]]:
    out = fleetforge("sql", "--data-dir", str(data_dir), "--format", "JSONEachRow", query).stdout
    return [json.loads(line, parse_float=Decimal) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("seed", [4, 9])
def test_demo_summary_equals_the_derived_tables(tmp_path: Path, seed: int) -> None:
    data_dir = tmp_path / "ff"
    summary = json.loads(fleetforge("demo", "--no-serve", "--json", "--data-dir", str(data_dir), "--runs", "30",
                                    "--seed", str(seed)).stdout)
    assert "stored 0 events" in fleetforge("sink", "--once", "--data-dir", str(data_dir)).stdout  # all streamed

    runs = {r["status"]: int(r["n"]) for r in sql(data_dir, "SELECT status, sum(runs) AS n FROM "
                                                  "telemetry.run_latency_metrics WHERE status != '' GROUP BY status")}
    assert runs == summary["runs"]["by_status"]
    attempts = sql(data_dir, "SELECT sum(steps) AS n, sumIf(steps, attempt > 1) AS r "
                             "FROM telemetry.step_retry_heatmap")
    assert (int(attempts[0]["n"]), int(attempts[0]["r"])) == (summary["steps"]["attempts"], summary["steps"]["retries"])
    effects = {r["effect"]: int(r["n"]) for r in sql(data_dir, "SELECT effect, sum(decisions) AS n FROM "
                                                     "telemetry.policy_decision_rates GROUP BY effect")}
    assert {k: v for k, v in summary["policy_decisions"]["by_effect"].items() if v} == effects
    packs = {r["pack"]: int(r["n"]) for r in sql(data_dir, "SELECT pack, sum(decisions) AS n FROM "
                                                 "telemetry.policy_decision_rates GROUP BY pack")}
    assert packs == summary["policy_decisions"]["by_pack"]
    budget = sql(data_dir, "SELECT workspace, app, sum(tokens_reserved) AS tr, sum(tokens_used) AS tu, "
                           "toString(sum(cost_reserved)) AS cr, toString(sum(cost_used)) AS cu "
                           "FROM telemetry.budget_burndown GROUP BY workspace, app ORDER BY workspace, app")
    want = summary["budget"]["by_workspace_app"]
    got = [(b["workspace"], b["app"], int(b["tr"]), int(b["tu"]), Decimal(b["cr"]), Decimal(b["cu"]))
           for b in budget]
    assert got == [(w["workspace"], w["app"], w["tokens_reserved"], w["tokens_used"],
                    Decimal(str(w["cost_reserved"])), Decimal(str(w["cost_used"]))) for w in want]
    tools = sql(data_dir, "SELECT sum(calls) AS n, sum(failures) AS f FROM telemetry.tool_error_taxonomy")
    assert (int(tools[0]["n"]), int(tools[0]["f"])) == (summary["tool_calls"]["total"], summary["tool_calls"]["failed"])
    kinds = {r["error_kind"]: int(r["n"]) for r in sql(data_dir, "SELECT error_kind, sum(failures) AS n FROM "
                                                       "telemetry.tool_error_taxonomy WHERE error_kind != '' "
                                                       "GROUP BY error_kind")}
    assert kinds == summary["tool_calls"]["by_error_kind"]

    agents = summary["agents"]  # the support agents: steps, LLM turns, tool calls by tool and outcome
    assert agents["steps"]["total"] > 0 and agents["turns"]["total"] >= agents["steps"]["total"]
    assert agents["tool_calls"]["by_outcome"]["denied"] > 0  # tool_acl denies `weather` in some runs
    units = sql(data_dir, "SELECT unit, status, tool, sum(units) AS n FROM telemetry.agent_activity "
                          "GROUP BY unit, status, tool HAVING n > 0")
    for unit, part in (("agent", "steps"), ("turn", "turns")):
        assert {u["status"]: int(u["n"]) for u in units if u["unit"] == unit} == agents[part]["by_status"]
    by_tool: dict[str, dict[str, int]] = {}
    outcomes: dict[str, int] = {}
    for u in units:
        if u["unit"] == "call":
            outcome = "ok" if u["status"] == "succeeded" else u["status"]
            outcomes[outcome] = outcomes.get(outcome, 0) + int(u["n"])
            if outcome in ("ok", "failed", "denied"):
                by_tool.setdefault(u["tool"], {"ok": 0, "failed": 0, "denied": 0})[outcome] += int(u["n"])
    assert by_tool == agents["tool_calls"]["by_tool"]
    assert outcomes == {k: v for k, v in agents["tool_calls"]["by_outcome"].items() if v}


def test_sql_prints_like_clickhouse_client_and_fails_clearly(tmp_path: Path) -> None:
    data_dir = tmp_path / "ff"
    fleetforge("analytics", "apply", "--data-dir", str(data_dir))
    pretty = fleetforge("sql", "--data-dir", str(data_dir), "SELECT 1 AS one, 'x' AS s").stdout
    assert "┌─one─┬─s─┐" in pretty
    assert fleetforge("sql", "--data-dir", str(data_dir), "--format", "CSV", "SELECT 1, 'a,b'").stdout == '1,"a,b"\n'
    assert fleetforge("sql", "--data-dir", str(data_dir), "--format", "JSONEachRow",
                      "SELECT 1 AS n").stdout.strip() == '{"n":1}'
    bad = fleetforge("sql", "--data-dir", str(data_dir), "SELECT * FROM telemetry.nope", check=False)
    assert bad.returncode != 0 and "telemetry.nope" in bad.stderr
    both = fleetforge("sql", "--data-dir", str(data_dir), "--clickhouse-url", "http://127.0.0.1:9", "SELECT 1",
                      check=False)
    assert both.returncode == 2 and "expected one" in both.stderr
    down = fleetforge("sql", "--clickhouse-url", "http://user:hunter2@127.0.0.1:9", "SELECT 1", check=False)
    assert down.returncode == 1 and "cannot reach ClickHouse" in down.stderr and "hunter2" not in down.stderr
    again = fleetforge("analytics", "apply", "--data-dir", str(data_dir)).stdout
    assert "none pending" in again
