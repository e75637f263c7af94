"""Kill test for agents, on SQLite and PostgreSQL: a `fleetforge worker` is SIGKILLed in the middle of agent
runs of 8 turns and another worker finishes them. Every run succeeds; the ledger shows each LLM turn paid
exactly once; the `tally` tool (tests/integration/agentkilltools.py) shows each call committed before the kill never ran
again, and each call ran to its committed attempt exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.ports.store import Store
from tests.integration.test_worker_kill import _cli, target

__all__ = ["target"]  # the fixture: a migrated SQLite file or PostgreSQL database, and the worker's options

REPO = Path(__file__).resolve().parents[2]
TOOLS = "tests.integration.agentkilltools:register"
RUNS = 4
TURNS = 8  # 7 turns calling `tally`, then a final answer
KILL_AFTER_CALLS = 9


def _spec(i: int) -> dict[str, Any]:
    return {"workspace": "killtest", "app": "agents", "seed": 100 + i, "steps": [{
        "id": "agent", "type": "agent",
        "execution": {"max_attempts": 5, "retry_backoff_ms": 50, "deadline_ms": 20_000},
        "inputs": {"model": "sim-small", "instructions": "Count things.", "tools": ["tally"],
                   "max_turns": TURNS + 2, "sim_tool_turns": TURNS - 1, "latency_ms": 60}}]}


def _lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []


def test_sigkilled_worker_mid_agent_resumes_at_the_first_unfinished_unit(
        tmp_path: Path, target: tuple[Store, list[str]]) -> None:
    store, where = target
    log = tmp_path / "calls.log"

    async def submit() -> list[str]:
        async with httpx.AsyncClient() as client:
            rt = build_runtime(store, client)
            return [rt.submit(_spec(i)) for i in range(RUNS)]

    run_ids = asyncio.run(submit())
    env = {**os.environ, "FLEETFORGE_LEASE_MS": "1500", "AGENT_KILL_LOG": str(log), "AGENT_KILL_SLEEP_MS": "40"}
    env.pop("FLEETFORGE_TOOLS", None)
    args = [*_cli(), "worker", *where, "--tools", TOOLS]
    with (tmp_path / "victim.out").open("wb") as out:
        victim = subprocess.Popen([*args, "--id", "victim"], cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while len(_lines(log)) < KILL_AFTER_CALLS:
                assert victim.poll() is None, (tmp_path / "victim.out").read_text()[-2000:]
                assert time.monotonic() < deadline, "the agents made too few tool calls"
                time.sleep(0.01)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
    before_kill = len(_lines(log))
    assert victim.returncode == -signal.SIGKILL
    # the kill landed mid-agent: no run had finished
    assert all(r.status != "succeeded" for rid in run_ids for r in [store.get_run(rid)] if r is not None)

    rescuer = subprocess.run([*args, "--id", "rescuer", "--until-idle"], cwd=REPO, env=env,
                             capture_output=True, timeout=120)
    assert rescuer.returncode == 0, rescuer.stderr.decode(errors="replace")[-3000:]

    runs_by_call: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for line in _lines(log):
        runs_by_call[(line["seed"], line["step"])].append(line)
    assert len(_lines(log)) > before_kill
    for rid in run_ids:
        run = store.get_run(rid)
        assert run is not None and run.status == "succeeded", (rid, run)
        steps = {s.step_id: s for s in store.get_steps(rid)}
        out = steps["agent"].output
        assert out is not None and out["turns"] == TURNS and len(out["tool_calls"]) == TURNS - 1
        attempts = store.get_attempts(rid)
        by_step: dict[str, list[Any]] = defaultdict(list)
        for a in attempts:
            by_step[a.step_id].append(a)
        turns = [sid for sid in steps if sid.count(".") == 1]
        assert len(turns) == TURNS
        for sid in turns:  # each LLM turn paid exactly once: one succeeded attempt carries all its cost
            won = [a for a in by_step[sid] if a.status == "succeeded"]
            assert len(won) == 1, (sid, by_step[sid])
            assert sum(a.cost_used_micros for a in by_step[sid]) == won[0].cost_used_micros > 0
            assert sum(a.tokens_used for a in by_step[sid]) == won[0].tokens_used
        calls = [sid for sid in steps if sid.count(".") == 2]
        assert len(calls) == TURNS - 1
        for sid in calls:
            won = [a for a in by_step[sid] if a.status == "succeeded"]
            assert len(won) == 1, (sid, by_step[sid])
            ran = runs_by_call[(run.seed, sid)]
            # the committed attempt ran exactly once; nothing ran after it
            assert [x["attempt"] for x in ran].count(won[0].attempt) == 1, (sid, ran)
            assert max(x["attempt"] for x in ran) == won[0].attempt
            if won[0].worker == "victim":  # committed before the kill: never run again
                assert len(ran) == 1, (sid, ran)
    assert any(a.error_kind == "crash" for rid in run_ids for a in store.get_attempts(rid)), \
        "the kill interrupted no unit"
    events = [r.envelope for r in store.iter_outbox()]
    assert summary_from_events(events) == summary_from_store(store)
    if os.environ.get("CI") is None and not events:
        pytest.fail("no events")
