"""Kill test: a `fleetforge worker` process is SIGKILLed mid-run and another one finishes the fleet.

Runs on the SQLite store (a temporary data dir) and on PostgreSQL (a fresh database per test).
Steps use `slow_log` (tests/integration/killtools.py, loaded through `--tools`), which logs the
start and end of every execution, so the test can prove from the outside that no step ran twice
at the same time. The outbox and the cost ledger must agree on every attempt, and the attempts
the kill interrupted must be recorded as `step_failed` with error kind `crash`, then retried.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import RunStatus, StepStatus
from fleetforge.domain.names import TERMINAL_ATTEMPT_KINDS, EventKind
from fleetforge.ports.store import Store
from tests.conftest import PG_DSN, need_postgres

REPO = Path(__file__).resolve().parents[2]
TOOLS = "tests.integration.killtools:register"
RUNS = 30
KILL_AFTER_STARTS = 24  # SIGKILL once this many executions have started (of 90 steps)
LEASE_MS = 1500
WORKER_TIMEOUT_S = 120
Key = tuple[str, str, int]  # (run tag or run id, step id, attempt)


def _cli() -> list[str]:
    """The installed `fleetforge` console script beside this interpreter, else the module via -c."""
    script = Path(sys.executable).with_name("fleetforge")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from fleetforge.adapters.cli.main import main; main()"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, list[str]]]:
    """(a migrated store for submitting and inspecting, the worker's store options)."""
    if request.param == "sqlite":
        data_dir = tmp_path / "data"
        sqlite_store = SqliteStore(data_dir / "state.db")
        sqlite_store.migrate()
        yield sqlite_store, ["--data-dir", str(data_dir)]
        sqlite_store.close()
        return
    need_postgres()
    dbname = f"fft_kill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = urlsplit(PG_DSN)._replace(path=f"/{dbname}").geturl()
    pg_store = PostgresStore(url)
    try:
        pg_store.migrate()
        yield pg_store, ["--store", url]
    finally:
        pg_store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def _spec(i: int, log: Path, rng: random.Random) -> dict[str, Any]:
    def step(sid: str, deps: list[str]) -> dict[str, Any]:
        args = {"log": str(log), "key": f"r{i:02d}", "sleep_ms": rng.randint(200, 500)}
        return {"id": sid, "type": "tool", "depends_on": deps,
                "execution": {"max_attempts": 5, "retry_backoff_ms": 50, "deadline_ms": 20_000},
                "inputs": {"tool": "slow_log", "args": args}}

    return {"workspace": "killtest", "app": f"app{i % 3}", "seed": i,
            "steps": [step("a", []), step("b", ["a"]), step("c", ["a"])]}


def _submit_all(store: Store, log: Path) -> dict[str, str]:
    """Submit RUNS runs; returns run tag -> run id."""

    async def go() -> dict[str, str]:
        async with httpx.AsyncClient() as client:
            runtime = build_runtime(store, client)
            rng = random.Random(2024)
            return {f"r{i:02d}": runtime.submit(_spec(i, log, rng)) for i in range(RUNS)}

    return asyncio.run(go())


def _read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_for_starts(log: Path, proc: subprocess.Popen[bytes], n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for e in _read_log(log) if e["ev"] == "start") >= n:
            return
        assert proc.poll() is None, f"the first worker exited early with code {proc.returncode}"
        time.sleep(0.02)
    pytest.fail(f"fewer than {n} steps started within {timeout_s:g}s")


def test_sigkilled_worker_loses_nothing_and_never_runs_a_step_twice_at_once(
    target: tuple[Store, list[str]], tmp_path: Path
) -> None:
    store, store_args = target
    log = tmp_path / "steps.log"
    tags = _submit_all(store, log)
    env = {**os.environ, "FLEETFORGE_LEASE_MS": str(LEASE_MS)}
    env.pop("FLEETFORGE_TOOLS", None)

    # 1. A worker with the test tools from --tools; SIGKILL it once steps are in flight.
    with (tmp_path / "victim.out").open("wb") as out:
        victim = subprocess.Popen([*_cli(), "worker", *store_args, "--id", "victim", "--tools", TOOLS],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_starts(log, victim, KILL_AFTER_STARTS)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
    killed_ns = time.monotonic_ns()
    assert victim.returncode == -signal.SIGKILL

    # 2. A second worker (tools from FLEETFORGE_TOOLS) runs until no run is open.
    rescuer = subprocess.run([*_cli(), "worker", *store_args, "--id", "rescuer", "--until-idle"],
                             cwd=REPO, env={**env, "FLEETFORGE_TOOLS": TOOLS}, capture_output=True,
                             timeout=WORKER_TIMEOUT_S)
    assert rescuer.returncode == 0, rescuer.stderr.decode(errors="replace")[-3000:]

    # 3. Every run succeeded.
    run_ids = {rid: tag for tag, rid in tags.items()}
    runs = {rid: store.get_run(rid) for rid in run_ids}
    statuses = {rid: r.status if r else None for rid, r in runs.items()}
    assert statuses == dict.fromkeys(run_ids, RunStatus.SUCCEEDED)
    for rid in run_ids:
        steps = {s.step_id: s.status for s in store.get_steps(rid)}
        assert steps == dict.fromkeys("abc", StepStatus.SUCCEEDED)

    # 4. From the log: each attempt executed at most once, and no two executions of a step overlapped.
    entries = _read_log(log)
    starts: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    ends: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        (starts if e["ev"] == "start" else ends)[(tags[e["key"]], e["step"], e["attempt"])].append(e)
    assert all(len(v) == 1 for v in starts.values()), "an attempt was executed more than once"
    assert all(len(v) == 1 for v in ends.values())
    assert set(ends) <= set(starts)
    interrupted = {k for k in starts if k not in ends}
    assert interrupted, "the kill interrupted no execution; the test proved nothing"
    victim_pid = victim.pid
    assert all(starts[k][0]["pid"] == victim_pid for k in interrupted)
    by_step: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    for k, (s,) in starts.items():
        end_ns = ends[k][0]["mono_ns"] if k in ends else killed_ns
        by_step[(k[0], k[1])].append((s["mono_ns"], end_ns, k[2]))
    for step_key, spans in by_step.items():
        spans.sort()
        for (_, prev_end, prev), (start, _, attempt) in itertools.pairwise(spans):
            assert start >= prev_end, f"{step_key}: attempt {attempt} started while attempt {prev} ran"

    # 5. Outbox vs ledger: exactly one terminal event per attempt, as many as ledger rows.
    ledger = {(a.run_id, a.step_id, a.attempt): a for rid in run_ids for a in store.get_attempts(rid)}
    terminal: Counter[Key] = Counter()
    terminal_events: dict[Key, Envelope] = {}
    for rec in store.iter_outbox():
        if rec.run_id not in run_ids or rec.kind not in TERMINAL_ATTEMPT_KINDS:
            continue
        env_ = Envelope.from_json(rec.envelope)
        assert env_.step_id is not None
        key = (env_.run_id, env_.step_id, env_.attempt)
        terminal[key] += 1
        terminal_events[key] = env_
    assert [k for k, n in terminal.items() if n != 1] == []
    assert sum(terminal.values()) == len(ledger)
    assert set(terminal) == set(ledger)
    assert set(starts) <= set(ledger)
    assert all(a.status in ("succeeded", "failed") for a in ledger.values())

    # 6. Interrupted attempts: step_failed / crash in both, owned by the victim, and retried.
    crashed = {k for k, a in ledger.items() if a.error_kind == "crash"}
    assert interrupted <= crashed
    for k in crashed:
        a, ev = ledger[k], terminal_events[k]
        assert (a.status, a.worker) == ("failed", "victim")
        assert ev.kind is EventKind.STEP_FAILED and ev.payload["error_kind"] == "crash"
        assert (k[0], k[1], k[2] + 1) in ledger, f"{k} was not retried"
    # Every attempt that did not crash ran to completion exactly once.
    for k, a in ledger.items():
        if k not in crashed:
            assert a.status == "succeeded" and k in starts and k in ends, (k, a.status)
