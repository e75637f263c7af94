"""Kill test for graph steps: a `fleetforge worker` running the example graph is SIGKILLed during its fourth
super-step (the tools node, after its tool call committed, before the node returned), on SQLite and on
PostgreSQL. Another worker resumes the graph from its checkpoint after the third super-step: the run
succeeds, the node log shows no completed node ran twice, and the ledger shows each model call paid once
and the committed tool call recognised instead of run again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.store import Store
from tests.integration.langgraph_support import EXAMPLE, REPO, graph_spec, need_langgraph, node_log
from tests.integration.test_worker_kill import _cli, target

__all__ = ["target"]

pytestmark = pytest.mark.slow
BLOCK_AT = 4  # super-steps: 1 agent, 2 tools, 3 agent, 4 tools, 5 agent (the answer)


def _failures(store: Store) -> list[tuple[str | None, Any]]:
    events = (Envelope.from_json(r.envelope) for r in store.iter_outbox())
    return [(e.step_id, e.payload.get("error")) for e in events if e.kind == "step_failed"]


def test_sigkilled_worker_mid_graph_resumes_after_the_last_completed_super_step(
        target: tuple[Store, list[str]], tmp_path: Path) -> None:
    need_langgraph()
    from fleetforge.adapters.executors.langgraph.checkpoints import thread_id

    store, options = target
    log = tmp_path / "nodes.log"
    spec = graph_spec(entrypoint="tests.integration.langgraph_support:create_logged_graph", latency_ms=20,
                      execution={"max_attempts": 3, "retry_backoff_ms": 50, "deadline_ms": 60_000})

    async def submit() -> str:
        async with httpx.AsyncClient() as client:
            os.environ["LG_NODE_LOG"] = str(log)  # the submit-time check imports the entrypoint
            return build_runtime(store, client).submit(spec)

    rid = asyncio.run(submit())
    path = os.pathsep.join([str(REPO / "src"), str(REPO), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "FLEETFORGE_LEASE_MS": "1500", "LG_NODE_LOG": str(log),
           "LG_BLOCK_AT": str(BLOCK_AT)}
    args = [*_cli(), "worker", *options]
    with (tmp_path / "victim.out").open("wb") as out:
        victim = subprocess.Popen([*args, "--id", "victim"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while not any(e["event"] == "blocked" for e in node_log(log)):
                assert victim.poll() is None, (tmp_path / "victim.out").read_text()[-3000:]
                assert time.monotonic() < deadline, f"the graph never reached super-step {BLOCK_AT}: {node_log(log)}"
                time.sleep(0.02)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    before = {s.step_id: s.status for s in store.get_steps(rid)}
    assert before["graph.t2.ccall_2_0"] == "succeeded" and "graph.t3" not in before  # killed inside step 4

    env["LG_BLOCK_AT"] = "0"
    rescuer = subprocess.run([*args, "--id", "rescuer", "--until-idle"], cwd=REPO, env=env, capture_output=True,
                             timeout=180)
    assert rescuer.returncode == 0, rescuer.stderr.decode(errors="replace")[-3000:]
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", (run, _failures(store), rescuer.stderr[-2000:])

    lines = node_log(log)
    starts = Counter((e["node"], e["step"]) for e in lines if e["event"] == "start")
    ends = Counter((e["node"], e["step"]) for e in lines if e["event"] == "end")
    assert sorted(ends) == [("agent", 1), ("agent", 3), ("agent", 5), ("tools", 2), ("tools", 4)]
    assert set(ends.values()) == {1}  # every node completed exactly once
    assert starts[("tools", BLOCK_AT)] == 2  # the interrupted node ran again, in the rescuer
    assert all(starts[k] == 1 for k in ends if k[1] != BLOCK_AT)  # no completed node ran again
    assert {e["pid"] for e in lines if e["step"] < BLOCK_AT} != {e["pid"] for e in lines if e["step"] > BLOCK_AT}

    attempts = store.get_attempts(rid)
    by_step = Counter(a.step_id for a in attempts)
    for sid in ("graph.t1", "graph.t2", "graph.t3", "graph.t1.ccall_1_0", "graph.t2.ccall_2_0"):
        assert by_step[sid] == 1, (sid, [a for a in attempts if a.step_id == sid])  # paid / run once
    assert [a.status for a in attempts if a.step_id == "graph.t2.ccall_2_0"] == ["succeeded"]
    assert [a.worker for a in attempts if a.step_id in ("graph.t1", "graph.t2")] == ["victim", "victim"]
    assert [a.worker for a in attempts if a.step_id == "graph.t3"] == ["rescuer"]
    graph = sorted((a for a in attempts if a.step_id == "graph"), key=lambda a: a.attempt)
    assert [(a.status, a.error_kind) for a in graph] == [("failed", "crash"), ("succeeded", "")]
    output: dict[str, Any] = next(s for s in store.get_steps(rid) if s.step_id == "graph").output or {}
    assert [m["role"] for m in output["messages"]] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    # LangGraph's own checkpoints in the store's database, each tagged with the attempt that wrote it
    database: str = store.database  # type: ignore[attr-defined]
    schema: str = getattr(store, "schema", "")  # on PostgreSQL the store's own schema
    assert asyncio.run(_lineage(database, schema, thread_id(rid, "graph"))) == {
        -1: 1, 0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2}  # loop step s ends super-step s (-1, 0: the input)
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)


async def _lineage(database: str, schema: str, thread: str) -> dict[int, int]:
    from fleetforge.adapters.executors.langgraph.checkpoints import checkpointer

    async with checkpointer(database, schema) as saver:
        return {c.metadata["step"]: c.metadata["fleetforge_attempt"]  # type: ignore[typeddict-item]
                async for c in saver.alist({"configurable": {"thread_id": thread}})}
