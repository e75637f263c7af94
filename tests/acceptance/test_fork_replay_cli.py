"""`fleetforge runs fork` and `fleetforge runs replay` through the real command line: exit codes, what is
stored, and a tampered record reported as drift."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from fleetforge.adapters import operations
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from tests.acceptance.test_runs_cli import cli, seed_runs, worker
from tests.integration.test_fork_replay import counted_tools

FLOW = {"workspace": "acme", "app": "fork-test", "steps": [
    {"id": "a", "type": "tool", "inputs": {"tool": "calculator", "args": {"expression": "2 + 3"}}},
    {"id": "b", "type": "tool", "depends_on": ["a"],
     "inputs": {"tool": "calculator", "args": {"expression": "${{ steps.a.output.result }} * 2"}}},
], "outputs": {"b": "${{ steps.b.output.result }}"}}
RUN = "01flow0000000000000000000000"


def stored(data: Path) -> tuple[int, int]:
    store = SqliteStore(data / "state.db")
    try:
        return len(store.list_runs(limit=1000)), sum(1 for _ in store.iter_outbox())
    finally:
        store.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "ff"
    seed_runs(folder, {RUN: FLOW})
    worker(folder)
    return folder


def test_fork_then_replay_both_reproduce(data: Path, tmp_path: Path) -> None:
    patch = tmp_path / "b.json"
    patch.write_text(json.dumps({"tool": "calculator", "args": {"expression": "${{ steps.a.output.result }} * 3"}}))
    made = json.loads(cli(data, "runs", "fork", RUN[:8], "--from", "b", "--patch", "b", str(patch), "--as", "bob",
                          "--json").stdout)
    assert made["forked_from"] == RUN
    worker(data)
    got = json.loads(cli(data, "runs", "get", made["run_id"], "--json").stdout)
    assert got["status"] == "succeeded" and got["outputs"] == {"b": 15}
    assert [a["step_id"] for a in got["attempts"]] == ["b"]  # a was reused, not run
    assert [s["reused"] for s in got["steps"]] == [True, False]
    assert got["forked_from"] == {"run_id": RUN, "step": "b", "actor": "bob"}
    for run, calls in ((RUN, 2), (made["run_id"], 1)):
        report = json.loads(cli(data, "runs", "replay", run, "--json").stdout)
        assert report["ok"] and report["token_drift"] == 0 and report["calls_answered"] == calls


def test_a_tampered_output_is_drift_with_exit_code_5(data: Path) -> None:
    store = SqliteStore(data / "state.db")
    try:
        with store.transaction() as tx:  # the recorded output of `a`, which `b` reads, rewritten
            tx.c.execute("UPDATE steps SET output = ? WHERE run_id = ? AND step_id = 'a'",
                         (json.dumps({"result": 50}), RUN))
    finally:
        store.close()
    report = json.loads(cli(data, "runs", "replay", RUN, "--json", code=5).stdout)
    assert not report["ok"] and report["calls_unrecorded"]
    assert {s["step_id"] for s in report["steps"] if not s["reproduced"]} == {"b"}
    assert "differences" in cli(data, "runs", "replay", RUN, code=5).stdout


@pytest.mark.parametrize(("args", "code", "says"), [
    (["runs", "fork", "01zzzz", "--from", "a"], 3, "no run"),
    (["runs", "fork", RUN, "--from", "nowhere"], 2, "--from: got 'nowhere', expected a step of run"),
    (["runs", "fork", RUN, "--from", "b", "--patch", "b", "PATCH"], 2, "--patch: steps[1].inputs"),
    (["runs", "fork", RUN, "--from", "b", "--patch", "b", "MISSING"], 2, "cannot read"),
    (["runs", "replay", "01zzzz"], 3, "no run"),
])
def test_bad_input_is_a_clear_error_and_stores_nothing(data: Path, tmp_path: Path, args: list[str], code: int,
                                                       says: str) -> None:
    bad = tmp_path / "patch.json"
    bad.write_text(json.dumps({"args": {"expression": "1"}}))  # no tool: fails validation as at submit
    args = [str(bad) if a == "PATCH" else str(tmp_path / "none.json") if a == "MISSING" else a for a in args]
    before = stored(data)
    proc = cli(data, *args, code=code)
    assert says in proc.stderr
    assert stored(data) == before


def test_replay_of_a_run_not_finished_is_bad_input(data: Path) -> None:
    seed_runs(data, {"01wait0000000000000000000000": FLOW})  # no worker: still queued
    proc = cli(data, "runs", "replay", "01wait", code=2)
    assert "is queued, expected a finished run" in proc.stderr


def test_every_run_of_fleetforge_demo_replays_with_zero_drift_and_no_call(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    cli(folder, "demo", "--runs", "12", "--seed", "9", "--no-serve", "--json")
    store = SqliteStore(folder / "state.db")
    try:
        ids = [r.id for r in store.list_runs(limit=100)]
        tool_calls: Counter[str] = Counter()
        reports = asyncio.run(operations.replay(store, ids, tools=counted_tools(tool_calls)))
    finally:
        store.close()
    assert len(reports) == 12 and not tool_calls
    assert all(r.ok and r.token_drift == 0 and r.cost_drift_micros == 0 for r in reports), [
        r.to_dict() for r in reports if not r.ok]
    assert {r.status_recorded for r in reports} >= {"succeeded", "failed"}
    assert sum(r.calls_answered for r in reports) > 12
