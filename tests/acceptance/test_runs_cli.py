"""`fleetforge runs list/get/cancel/tail` through the real command line: whole ids at any width, id
prefixes, and following a run's events until it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.runtime import Runtime

OK = {"workspace": "acme", "app": "tail-test",
      "steps": [{"id": "calc", "type": "tool", "inputs": {"tool": "calculator", "args": {"expression": "2+2"}}},
                {"id": "again", "type": "tool", "depends_on": ["calc"],
                 "inputs": {"tool": "calculator", "args": {"expression": "3*3"}}}]}
BAD = {"workspace": "acme", "app": "tail-test",
       "steps": [{"id": "div", "type": "tool", "inputs": {"tool": "calculator", "args": {"expression": "1/0"}}}]}


def env(columns: int = 200) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_"))}
    e.update(COLUMNS=str(columns), NO_COLOR="1", TERM="dumb")
    return e


def cli(data: Path, *args: str, columns: int = 200, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "fleetforge", *args, "--data-dir", str(data)], env=env(columns),
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    return proc


def seed_runs(data: Path, specs: dict[str, dict[str, object]]) -> None:
    """Store runs under the given ids (ids the CLI cannot choose)."""
    data.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data / "state.db")
    store.migrate()
    try:
        rt = Runtime(store, executors={}, packs=default_packs())
        for rid, spec in specs.items():
            rt.submit(spec, run_id=rid)
    finally:
        store.close()


def worker(data: Path) -> None:
    cli(data, "worker", "--until-idle", "--poll-ms", "5", "--no-telemetry", "--no-retention")


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_runs_list_prints_every_id_whole_on_one_line(tmp_path: Path, columns: int) -> None:
    data = tmp_path / "d"
    long_id = "7f3c9a2e-5b1d-4c8e-9a6f-0d2b4e6c8a1f-retry-2024-batch"
    seed_runs(data, {long_id: OK, "e1b2c3d4-0000-4000-8000-000000000001": OK})
    ids = [r["run_id"] for r in json.loads(cli(data, "runs", "list", "--json").stdout)]
    assert len(ids) == 2
    lines = cli(data, "runs", "list", columns=columns).stdout.splitlines()
    for rid in ids:
        assert any(rid in line for line in lines), (columns, rid, lines)
    assert all(len(line) <= columns for line in lines if not any(rid in line for rid in ids))


def test_runs_get_and_cancel_take_a_unique_prefix(tmp_path: Path) -> None:
    data = tmp_path / "d"
    seed_runs(data, {"aaaa1111-x": OK, "aaaa2222-y": OK, "bbbb0000-z": OK})
    got = json.loads(cli(data, "runs", "get", "aaaa1", "--json").stdout)
    assert got["run_id"] == "aaaa1111-x"
    amb = cli(data, "runs", "get", "aaaa", code=2)
    assert "'aaaa' matches 2 runs: aaaa1111-x, aaaa2222-y" in amb.stderr and amb.stdout == ""
    assert "no run 'cccc'" in cli(data, "runs", "get", "cccc", code=3).stderr
    assert "run id: got ''" in cli(data, "runs", "get", "", code=2).stderr
    cli(data, "runs", "cancel", "aaaa", code=2)
    assert cli(data, "runs", "cancel", "bbbb").stdout.strip() == "canceled"
    assert json.loads(cli(data, "runs", "get", "bbbb", "--json").stdout)["status"] == "canceled"
    cli(data, "runs", "cancel", "zz", code=3)


def test_runs_tail_exit_codes_follow_the_run_outcome(tmp_path: Path) -> None:
    data = tmp_path / "d"
    seed_runs(data, {"ok-run": OK, "bad-run": BAD, "gone-run": OK})
    cli(data, "runs", "cancel", "gone")
    worker(data)
    text = cli(data, "runs", "tail", "ok").stdout.splitlines()
    assert text[0].split()[1] == "run_submitted" and text[-1].split()[1] == "run_succeeded"
    assert any("calc#1" in line and "tool=calculator" in line for line in text)
    events = [json.loads(line) for line in cli(data, "runs", "tail", "ok-run", "--json").stdout.splitlines()]
    assert {e["run_id"] for e in events} == {"ok-run"} and events[-1]["kind"] == "run_succeeded"
    assert len(events) == len(text)
    assert cli(data, "runs", "tail", "bad", code=1).stdout.splitlines()[-1].split()[1] == "run_failed"
    assert cli(data, "runs", "tail", "gone", code=4).stdout.splitlines()[-1].split()[1] == "run_canceled"
    cli(data, "runs", "tail", "nope", code=3)


def _popen_tail(data: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fleetforge", "runs", "tail", *args, "--poll-ms", "20",
                             "--data-dir", str(data)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_runs_tail_streams_events_as_they_commit(tmp_path: Path) -> None:
    data = tmp_path / "d"
    seed_runs(data, {"live-run": OK})
    tail = _popen_tail(data, "live", "--json")
    try:
        assert tail.stdout is not None
        first = json.loads(tail.stdout.readline())  # printed while the run is still queued
        assert first["kind"] == "run_submitted"
        assert tail.poll() is None
        worker(data)
        rest, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    kinds = ["run_submitted", *(json.loads(line)["kind"] for line in rest.splitlines())]
    assert kinds[-1] == "run_succeeded" and kinds.count("step_succeeded") == 2


def test_runs_tail_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "d"
    seed_runs(data, {"idle-run": OK})
    tail = _popen_tail(data, "idle")
    try:
        assert tail.stdout is not None
        assert "run_submitted" in tail.stdout.readline()
        time.sleep(0.3)
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert tail.returncode == 130 and "Traceback" not in err
