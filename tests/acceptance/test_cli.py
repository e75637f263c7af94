"""The real command line end to end: `demo --json` is the ground truth of the outbox, the same seed gives
the same fleet, and submit → worker → runs list/get/cancel round-trip through one store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.summary import summary_from_events, summary_from_store
from tests.fakes import check_envelope


def cli(*args: str, cwd: Path, stdin: str = "", ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_"))}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    proc = subprocess.run([sys.executable, "-m", "fleetforge", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def outbox(data_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(summary from the outbox, summary from the state tables, envelopes) of the store in `data_dir`."""
    store = SqliteStore(data_dir / "state.db")
    try:
        envelopes = [json.loads(r.envelope) for r in store.iter_outbox()]
        return summary_from_events(r.envelope for r in store.iter_outbox()), summary_from_store(store), envelopes
    finally:
        store.close()


def demo_json(tmp_path: Path, name: str, seed: int) -> tuple[str, Path]:
    data_dir = tmp_path / name
    proc = cli("demo", "--no-serve", "--json", "--runs", "24", "--seed", str(seed), "--data-dir", str(data_dir),
               cwd=tmp_path)
    return proc.stdout, data_dir


SHAPE = {
    "runs": {"total", "by_status"},
    "steps": {"total", "by_status", "attempts", "retries"},
    "policy_decisions": {"total", "by_effect", "by_pack"},
    "budget": {"tokens_reserved", "tokens_used", "cost_reserved", "cost_used", "by_workspace_app"},
    "tool_calls": {"total", "failed", "by_error_kind"},
    "agents": {"steps", "turns", "tool_calls"},
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return demo_json(tmp_path_factory.mktemp("demo"), "d1", 3)


def test_demo_json_is_the_ground_truth_of_the_outbox(demo_run: tuple[str, Path]) -> None:
    stdout, data_dir = demo_run
    assert stdout.endswith("\n") and stdout.count("\n") == 1  # exactly one JSON object, nothing else
    summary = json.loads(stdout)
    assert {k: set(v) for k, v in summary.items()} == SHAPE
    assert set(summary["policy_decisions"]["by_effect"]) == {"allow", "deny", "modify"}
    for row in summary["budget"]["by_workspace_app"]:
        assert set(row) == {"workspace", "app", "tokens_reserved", "tokens_used", "cost_reserved", "cost_used"}
    from_events, from_store, envelopes = outbox(data_dir)
    assert summary == from_events == from_store
    for env in envelopes:
        check_envelope(env)
    # a realistic fleet: every outcome the demo promises shows up
    assert summary["runs"]["total"] == 24 and sum(summary["runs"]["by_status"].values()) == 24
    assert summary["runs"]["by_status"].get("succeeded", 0) > 0 and summary["runs"]["by_status"].get("failed", 0) > 0
    assert summary["steps"]["retries"] > 0 and summary["tool_calls"]["failed"] > 0
    assert summary["policy_decisions"]["by_effect"]["deny"] > 0
    assert summary["policy_decisions"]["by_effect"]["modify"] > 0
    assert summary["steps"]["by_status"].get("denied", 0) > 0
    assert {(r["workspace"], r["app"]) for r in summary["budget"]["by_workspace_app"]} == {
        ("acme", "support-bot"), ("acme", "research"), ("globex", "enrichment"), ("globex", "ops-bot"),
        ("acme", "support-agent")}
    assert summary["budget"]["tokens_used"] > 0 and summary["budget"]["cost_used"] > 0
    agents = summary["agents"]  # the support agents looped over their tools; tool_acl denied some calls
    assert set(agents["tool_calls"]["by_outcome"]) >= {"ok", "failed", "denied"}
    assert agents["steps"]["by_status"].get("succeeded", 0) > 0 and agents["turns"]["total"] > agents["steps"]["total"]
    assert set(agents["tool_calls"]["by_tool"]) == {"crm_lookup", "weather"}
    assert agents["tool_calls"]["by_outcome"]["ok"] > 0 and agents["tool_calls"]["by_outcome"]["denied"] > 0


def test_the_same_seed_gives_the_same_fleet(demo_run: tuple[str, Path], tmp_path: Path) -> None:
    again, _ = demo_json(tmp_path, "d2", 3)
    assert again == demo_run[0]
    other, _ = demo_json(tmp_path, "d3", 4)
    assert other != demo_run[0]


SPEC = {
    "workspace": "acme", "app": "cli-test", "labels": {"suite": "acceptance"}, "budget": {"tokens": 50_000},
    "steps": [
        {"id": "lookup", "type": "tool", "inputs": {"tool": "crm_lookup", "args": {"customer_id": 42}}},
        {"id": "reply", "type": "llm", "depends_on": ["lookup"],
         "policy": {"packs": [{"name": "pii_redaction", "mode": "redact"}]},
         "inputs": {"model": "sim-small", "prompt": "Write to ada@example.com", "latency_ms": 1}},
    ],
}
FAILING = """
workspace: acme
app: cli-test
steps:
  - id: flaky
    type: tool
    execution: {max_attempts: 2, retry_backoff_ms: 1}
    inputs: {tool: calculator, args: {expression: "1 / 0"}}
"""


def test_submit_worker_list_get_cancel_round_trip(tmp_path: Path) -> None:
    dd = ("--data-dir", str(tmp_path / "data"))
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    ok = json.loads(cli("submit", "spec.json", "--json", *dd, cwd=tmp_path).stdout)["run_id"]
    failing = cli("submit", "-", *dd, cwd=tmp_path, stdin=FAILING).stdout.strip()
    doomed = json.loads(cli("submit", "spec.json", "--json", *dd, cwd=tmp_path).stdout)["run_id"]
    assert len({ok, failing, doomed}) == 3
    listed = json.loads(cli("runs", "list", "--json", *dd, cwd=tmp_path).stdout)
    assert {r["run_id"]: r["status"] for r in listed} == {ok: "queued", failing: "queued", doomed: "queued"}
    assert cli("runs", "cancel", doomed, *dd, cwd=tmp_path).stdout.strip() == "canceled"
    assert cli("runs", "cancel", doomed, *dd, cwd=tmp_path).stdout.strip() == "already finished"

    cli("worker", "--until-idle", "--id", "w-test", "--poll-ms", "5", *dd, cwd=tmp_path)

    listed = json.loads(cli("runs", "list", "--json", *dd, cwd=tmp_path).stdout)
    assert {r["run_id"]: (r["status"], r["error_kind"]) for r in listed} == {
        ok: ("succeeded", ""), failing: ("failed", "validation"), doomed: ("canceled", "")}
    assert all(r["workspace"] == "acme" and r["app"] == "cli-test" and r["finished_at"] for r in listed)
    only = json.loads(cli("runs", "list", "--status", "canceled", "--json", *dd, cwd=tmp_path).stdout)
    assert [r["run_id"] for r in only] == [doomed]

    got = json.loads(cli("runs", "get", ok, "--json", *dd, cwd=tmp_path).stdout)
    assert (got["run_id"], got["status"], got["workspace"], got["app"]) == (ok, "succeeded", "acme", "cli-test")
    assert len(got["trace_id"]) == 32
    assert [(s["step_id"], s["type"], s["status"], s["attempts"]) for s in got["steps"]] == [
        ("lookup", "tool", "succeeded", 1), ("reply", "llm", "succeeded", 1)]
    attempts = {a["step_id"]: a for a in got["attempts"]}
    assert attempts["lookup"]["tool"] == "crm_lookup" and attempts["lookup"]["provider"] == "python"
    assert attempts["reply"]["model"] == "sim-small" and attempts["reply"]["tokens_used"] > 0
    assert attempts["reply"]["tokens_reserved"] > 0
    assert sorted((d["step_id"], d["pack"], d["hook"], d["effect"]) for d in got["policy_decisions"]) == [
        ("reply", "pii_redaction", "post", "allow"), ("reply", "pii_redaction", "pre", "modify")]

    bad = json.loads(cli("runs", "get", failing, "--json", *dd, cwd=tmp_path).stdout)
    assert [(s["status"], s["error_kind"], s["attempts"]) for s in bad["steps"]] == [("failed", "validation", 1)]
    assert "flaky" in cli("runs", "get", failing, *dd, cwd=tmp_path).stdout  # the table form works too

    from_events, from_store, envelopes = outbox(tmp_path / "data")
    assert from_events == from_store
    assert from_store["runs"]["by_status"] == {"canceled": 1, "failed": 1, "succeeded": 1}
    assert [e["kind"] for e in envelopes if e["run_id"] == doomed] == [
        "run_submitted", "step_queued", "step_skipped", "step_skipped", "run_canceled"]
    assert {e["payload"]["worker"] for e in envelopes if e["kind"] == "step_started"} == {"w-test"}


def test_the_demo_dates_its_runs_over_a_window_the_dashboard_shows(demo_run: tuple[str, Path]) -> None:
    from itertools import pairwise

    from fleetforge.core.simtime import window_offsets
    from fleetforge.domain.envelope import parse_ts

    _, data_dir = demo_run
    store = SqliteStore(data_dir / "state.db")
    try:
        records = list(store.iter_outbox())
    finally:
        store.close()
    now_us = int(time.time() * 1e6)
    times: dict[str, list[int]] = {}
    for r in records:
        times.setdefault(r.run_id, []).append(parse_ts(json.loads(r.envelope)["occurred_at"]))
        assert now_us - r.created_us < 600e6  # the outbox's own time stays real (lag, retention)
    assert all(t == sorted(t) for t in times.values())  # in order within each run
    starts = sorted(t[0] for t in times.values())
    window = 45 * 60_000_000  # the default --window-minutes, inside the dashboard's default hour
    assert now_us - 3_600_000_000 < starts[0] and starts[-1] < now_us and starts[-1] - starts[0] > window / 2
    want = window_offsets(24, 3, window)  # the seed places each run
    gaps = [b - a for a, b in pairwise(starts)]
    assert all(abs(g - (b - a)) < 200_000 for g, (a, b) in zip(gaps, pairwise(want), strict=True))
