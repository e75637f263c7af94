"""Latency the runtime adds per durable agent unit (one LLM turn or one tool call), beside a plain loop.

An agent of N turns (each but the last calling one tool) runs on the simulator with zero latency and an
inline no-op tool, so what is measured is the runtime: claim, guardrails, ledger, outbox, completion,
coordination, and the wake-up of the next unit. The baseline is a plain Python loop calling the same
simulated LLM and the same tool with no durability. Figures: per-unit added latency p50 and p95 (each
run's wall time minus the plain loop's, divided by its units), and write transactions per unit (submit,
claims, completions and lease checks of the measured runs: a figure the machine's load does not move), on
SQLite and (when reachable) PostgreSQL.
With the langgraph extra, a LangGraph row per store: the governance time per model call and per tool call
of the example graph run as a step, beside the same graph invoked directly (bench/agent/graph.py).

    PYTHONPATH=src python bench/agent/bench.py [--runs 30] [--turns 8] [--postgres DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.sim_llm import SimulatedLLM
from fleetforge.adapters.executors.tools import ToolExecutor, ToolRegistry
from fleetforge.core.agent import coordinate
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.domain.models import StepRow, StepSpec, StepStatus
from fleetforge.ports.executor import ExecutionContext
from fleetforge.ports.store import Store, Tx


def _tools() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register("noop", lambda args: {"ok": True}, inline=True,
                 parameters={"type": "object", "properties": {"note": {"type": "string"}}})
    return reg


def _inputs(turns: int) -> dict[str, Any]:
    return {"model": "sim-small", "instructions": "Benchmark.", "tools": ["noop"], "max_turns": turns,
            "sim_tool_turns": turns - 1, "latency_ms": 0}


async def plain_loop(turns: int, seed: int) -> float:
    """The same units with no durability: seconds for one agent."""
    sim, tools, reg = SimulatedLLM(PriceTable(), sleep=False), ToolExecutor(_tools()), _tools()
    spec = StepSpec("a", "agent", _inputs(turns))
    children: dict[str, StepRow] = {}
    started = time.perf_counter()
    while True:
        d = coordinate(spec, children)
        if d.output is not None or d.failure is not None:
            return time.perf_counter() - started
        for u in d.create:
            inputs = dict(u.inputs)
            if u.type == "llm":
                inputs["tools"] = [t.function() for n in inputs["tools"] if (t := reg.get(n)) is not None]
                r = await sim.execute(ExecutionContext("r", StepSpec(u.step_id, "llm", inputs), 1, seed, inputs, 30.0))
            else:
                r = await tools.execute(ExecutionContext("r", StepSpec(u.step_id, "tool", inputs), 1, seed, inputs,
                                                         30.0))
            children[u.step_id] = StepRow("r", u.step_id, u.type, StepStatus.SUCCEEDED, {}, 1, 1, 0, 0, 0, 0, 0, 0,
                                          "", output=r.output)


class Counting:
    """`store`, counting its write transactions."""

    def __init__(self, store: Store) -> None:
        self.store, self.transactions = store, 0

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        self.transactions += 1
        with self.store.transaction() as tx:
            yield tx

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def durable(store: Store, runs: int, turns: int) -> list[float]:
    """Seconds per agent run, one run at a time, through a worker."""
    out = []
    async with httpx.AsyncClient() as client:
        executors = build_executors(client=client, tools=_tools(), prices=PriceTable(), llm_base_url=None,
                                    llm_api_key=None, sim_sleep=False)
        rt = Runtime(store, executors=executors, packs=default_packs())
        for i in range(runs):
            started = time.perf_counter()
            rt.submit({"seed": i, "steps": [{"id": "a", "type": "agent", "inputs": _inputs(turns)}]})
            await rt.worker(f"bench-{i}", poll_interval_s=0.05).run(until_idle=True)
            out.append(time.perf_counter() - started)
    return out


def report(name: str, store: Store, runs: int, turns: int) -> None:
    units = turns + (turns - 1)
    asyncio.run(durable(store, 3, turns))  # warm up
    counting = Counting(store)
    durable_s = asyncio.run(durable(counting, runs, turns))  # type: ignore[arg-type]
    plain_s = [asyncio.run(plain_loop(turns, i)) for i in range(runs)]
    added = sorted((d - p) / units * 1000 for d, p in zip(durable_s, plain_s, strict=True))
    p95 = added[min(len(added) - 1, round(0.95 * (len(added) - 1)))]
    print(f"{name:10s} units/run={units}  plain loop {statistics.median(plain_s) / units * 1e3:.3f} ms/unit  "
          f"durable {statistics.median(durable_s) / units * 1e3:.3f} ms/unit  "
          f"added p50 {statistics.median(added):.3f} ms  p95 {p95:.3f} ms  "
          f"transactions/unit {counting.transactions / (runs * units):.2f}")


def graph_row(name: str, store: Store, runs: int, turns: int) -> None:
    """The LangGraph row (bench/agent/graph.py), when the langgraph extra is installed."""
    try:
        from graph import report as graph_report
    except ImportError as exc:
        print(f"{name:10s} langgraph skipped: {exc} (pip install -e '.[langgraph]')")
        return
    graph_report(name, store, runs, turns)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    a = ap.parse_args()
    from fleetforge.adapters.stores.sqlite.store import SqliteStore

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(Path(tmp) / "state.db")
        sqlite.migrate()
        report("sqlite", sqlite, a.runs, a.turns)
        graph_row("sqlite", sqlite, a.runs, a.turns)
        sqlite.close()
    try:
        import psycopg
        from psycopg import sql

        from fleetforge.adapters.stores.postgres.store import PostgresStore

        name = f"bench_agent_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(a.postgres, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            pg = PostgresStore(a.postgres.rsplit("/", 1)[0] + f"/{name}")
            pg.migrate()
            report("postgres", pg, a.runs, a.turns)
            graph_row("postgres", pg, a.runs, a.turns)
            pg.close()
        finally:
            with psycopg.connect(a.postgres, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except Exception as exc:  # PostgreSQL unreachable: SQLite figures only
        print(f"postgres   skipped: {exc}")


if __name__ == "__main__":
    main()
