"""A run waiting for approval holds no worker, lease or connection: every worker process is SIGKILLed while
runs wait, new ones start, and the answers (through the CLI, the Python client and the HTTP API of a real
`fleetforge serve` process) finish the runs: approved ones succeed, the denied one fails with the recorded
reason. SQLite file and PostgreSQL database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from fleetforge import Client
from fleetforge.core.tokens import create_token
from fleetforge.domain.models import StepStatus
from fleetforge.domain.tokens import Scope
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.store import Store
from tests.integration.test_worker_kill import REPO, _cli, target
from tests.support import until

__all__ = ["target"]  # the fixture: SQLite data dir or a fresh PostgreSQL database


def _spec(i: int) -> dict[str, Any]:
    return {"workspace": "approvals", "app": "kill", "seed": i, "steps": [
        {"id": "a", "type": "tool", "inputs": {"tool": "noop", "args": {}}},
        {"id": "pay", "type": "tool", "depends_on": ["a"], "approval": {"timeout_ms": 600_000},
         "inputs": {"tool": "calculator", "args": {"expression": f"{i}+1"}}},
        {"id": "c", "type": "tool", "depends_on": ["pay"], "inputs": {"tool": "noop", "args": {}}}]}


def _workers(store_args: list[str], tag: str, tmp: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "FLEETFORGE_LEASE_MS": "1500"}
    procs = []
    for n in range(2):
        with (tmp / f"{tag}{n}.out").open("wb") as out:
            procs.append(subprocess.Popen([*_cli(), "worker", *store_args, "--id", f"{tag}{n}"], cwd=REPO, env=env,
                                          stdout=out, stderr=subprocess.STDOUT))
    return procs


def _logs(tmp: Path, tag: str) -> str:
    """What the worker processes tagged `tag` printed, for a failing assertion."""
    return "\n".join(f"{p.name}: {p.read_text(errors='replace')}" for p in sorted(tmp.glob(f"{tag}*.out")))


def _serve(store_args: list[str], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `fleetforge serve` process on a free port and its URL (read from its log)."""
    log = tmp / "serve.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([*_cli(), "serve", *store_args, "--port", "0", "--poll-ms", "50"], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    found: list[str] = []

    def started() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        found[:] = re.findall(r"API on (http://\S+/)", log.read_text(errors="replace"))
        return bool(found)

    until(started, 60)
    return proc, found[0]


def _waiting(store: Store, run_ids: list[str]) -> bool:
    return all({s.step_id: s.status for s in store.get_steps(r)}["pay"] is StepStatus.WAITING_APPROVAL
               for r in run_ids)


def test_waiting_runs_survive_sigkilled_workers_and_finish_when_answered(
        target: tuple[Store, list[str]], tmp_path: Path) -> None:
    store, store_args = target
    client = Client(store=store)
    run_ids = [client.submit(_spec(i)).run_id for i in range(3)]
    first = _workers(store_args, "first", tmp_path)
    try:
        until(lambda: _waiting(store, run_ids), 60)
    finally:
        for p in first:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
    assert all(p.returncode == -signal.SIGKILL for p in first), _logs(tmp_path, "first")
    for rid in run_ids:  # no lease, no worker: the wait is only rows
        pay = {s.step_id: s for s in store.get_steps(rid)}["pay"]
        assert pay.status is StepStatus.WAITING_APPROVAL and pay.lease_owner == "" and pay.attempt == 0
    second = _workers(store_args, "second", tmp_path)
    try:
        time.sleep(1.0)
        assert _waiting(store, run_ids)  # restarts change nothing
        approve = subprocess.run([*_cli(), "runs", "approve", run_ids[0][:13], "pay", *store_args, "--as", "ops",
                                  "--reason", "checked"], cwd=REPO, capture_output=True, timeout=60)
        assert approve.returncode == 0, approve.stderr.decode(errors="replace")
        client.run(run_ids[1]).approve("pay", actor="py")
        deny = subprocess.run([*_cli(), "runs", "deny", run_ids[2], "pay", *store_args, "--reason", "fraud"],
                              cwd=REPO, capture_output=True, timeout=60)
        assert deny.returncode == 0, deny.stderr.decode(errors="replace")
        again = subprocess.run([*_cli(), "runs", "deny", run_ids[2], "pay", *store_args, "--reason", "x"],
                               cwd=REPO, capture_output=True, timeout=60)
        assert again.returncode == 1 and b"not waiting for approval" in again.stderr + again.stdout
        results = [client.run(r).wait(60) for r in run_ids]
    finally:
        for p in second:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
    assert [r.status for r in results] == ["succeeded", "succeeded", "failed"]
    assert results[0].steps["pay"].output == {"expression": "0+1", "result": 1}
    assert results[2].error == "policy_denied" and results[2].steps["c"].status == "skipped"
    decisions = [(d.effect, d.reason) for r in run_ids for d in store.get_decisions(r)]
    assert decisions == [("allow", "checked"), ("allow", "approved by py"), ("deny", "fraud")]


def test_a_waiting_run_approved_through_the_api_after_every_process_is_killed_completes(
        target: tuple[Store, list[str]], tmp_path: Path) -> None:
    store, store_args = target
    token, row = create_token(store, Scope.CONTROL, "on-call", SystemClock())  # type: ignore[arg-type]
    run_id = Client(store=store).submit(_spec(7)).run_id
    first = [*_workers(store_args, "first", tmp_path), _serve(store_args, tmp_path)[0]]
    try:
        until(lambda: _waiting(store, [run_id]), 60)
    finally:
        for p in first:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
    assert all(p.returncode == -signal.SIGKILL for p in first)
    second = _workers(store_args, "second", tmp_path)
    server, url = _serve(store_args, tmp_path)
    try:
        time.sleep(1.0)
        assert _waiting(store, [run_id])  # restarts change nothing
        with Client(url, token=token) as api:
            api.run(run_id[:13]).approve("pay", reason="checked on the phone")
            result = api.run(run_id).wait(60)
    finally:
        for p in [*second, server]:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
    assert result.status == "succeeded" and result.steps["c"].status == "succeeded"
    assert result.steps["pay"].output == {"expression": "7+1", "result": 8}
    decisions = [(d.effect, d.reason) for d in store.get_decisions(run_id)]
    assert decisions == [("allow", "checked on the phone")]
    granted = [r.envelope for r in store.iter_outbox() if r.run_id == run_id and "approval_granted" in r.envelope]
    assert len(granted) == 1 and f"token:on-call#{row.id}" in granted[0] and token not in granted[0]
