"""Soak: N runs through a worker with retention on, beside the same load with retention off.

Runs of `--steps` independent `noop` tool steps are submitted in chunks; after each chunk one
in-process `Worker` drains them (timed: steps/s of that chunk). Retention runs in the background
the way `fleetforge worker` runs it (`RetentionService`, short windows so that the steady state is
reached within the benchmark). Two outbox readers run throughout: `sink` keeps up; `late` stops for
`--pause-s` once a quarter of the runs is done, then resumes (within its lag limit) and must read
every event: at the end both readers' (count, checksum of event ids) must equal each other and the
number of events written.

At each checkpoint (20k, 100k, 200k runs by default, those <= --runs) it prints the database size
(SQLite: file + WAL; PostgreSQL: every relation of the schema, indexes and TOAST included), the
outbox and runs rows left, and the claim throughput of the chunks just before the checkpoint (the
last tenth of the chunks, at least three), for retention on and (up to --baseline-runs) off.

    python bench/retention/bench.py --runs 20000            # SQLite
    python bench/retention/bench.py --runs 20000 --pg       # and PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
from psycopg import sql

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.retention import Retention, RetentionService, RetentionSettings
from fleetforge.ports.retention import RetentionStore
from fleetforge.ports.store import OutboxPosition, Store

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def run_spec(i: int, steps: int) -> dict[str, Any]:
    return {"workspace": "bench", "app": "soak", "seed": i,
            "steps": [{"id": f"s{k}", "type": "tool", "inputs": {"tool": "noop", "args": {}}} for k in range(steps)]}


@dataclass
class Target:
    backend: str
    path: str = ""
    dsn: str = ""
    schema: str = ""

    def open(self) -> Store:
        if self.backend == "sqlite":
            return SqliteStore(self.path)
        return PostgresStore(self.dsn, schema=self.schema, pool_size=6)

    def size_bytes(self) -> int:
        if self.backend == "sqlite":
            return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
        with psycopg.connect(self.dsn, autocommit=True) as c:
            row = c.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                            (self.schema,)).fetchone()
            assert row is not None
            return int(row[0])

    def rows(self) -> tuple[int, int]:
        """(outbox rows, runs rows)."""
        q = "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM runs)"
        if self.backend == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as c:
                a, b = c.execute(q).fetchone()
                return int(a), int(b)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            row = c.execute(q).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])


@contextlib.contextmanager
def make_target(backend: str, dsn: str) -> Iterator[Target]:
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="ffretention-")
        target = Target("sqlite", path=str(Path(folder) / "state.db"))
        store = target.open()
        store.migrate()
        store.close()
        try:
            yield target
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    target = Target("postgres", dsn=dsn, schema=f"ffret_{uuid.uuid4().hex[:10]}")
    pg = PostgresStore(dsn, schema=target.schema)
    pg.migrate()
    try:
        yield target
    finally:
        pg.drop_schema()
        pg.close()


class Reader(threading.Thread):
    """An outbox reader: pages after its cursor, stores the cursor, counts and checksums what it read."""

    def __init__(self, store: Store, name: str) -> None:
        super().__init__(daemon=True, name=f"reader-{name}")
        self.store, self.consumer = store, name
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.count = 0
        self.checksum = 0
        self.duplicates_or_gaps = 0
        self._last: OutboxPosition = (0, 0)

    def drain(self) -> int:
        n = 0
        while rows := self.store.read_outbox(self._last, 2000):
            for r in rows:
                if r.position <= self._last:
                    self.duplicates_or_gaps += 1
                self.count += 1
                self.checksum = (self.checksum + zlib.crc32(r.event_id.encode())) & 0xFFFFFFFFFFFF
                self._last = r.position
            self.store.set_cursor(self.consumer, self._last)
            n += len(rows)
        return n

    def run(self) -> None:
        self.store.set_cursor(self.consumer, (0, 0))
        while not self.stop.wait(0.2):
            if not self.paused.is_set():
                self.drain()


@dataclass
class Point:
    runs: int
    size: int
    outbox: int
    runs_left: int
    steps_per_s: float


@dataclass
class Soak:
    retention: bool
    points: list[Point] = field(default_factory=list)
    chunk_rates: list[float] = field(default_factory=list)
    events: int = 0
    readers_ok: str = ""
    late_pause_s: float = 0.0
    max_late_lag_s: float = 0.0


def soak(target: Target, *, runs: int, steps: int, chunk: int, checkpoints: list[int], retention_on: bool,
         settings: RetentionSettings, pause_s: float, concurrency: int) -> Soak:
    store = target.open()
    result = Soak(retention=retention_on)
    sink, late = Reader(store, "sink"), Reader(store, "late")
    sink.start()
    late.start()
    service: RetentionService | None = None
    if retention_on:
        service = RetentionService(Retention(cast(RetentionStore, store), settings, holder="bench")).start()
    pause_at, paused_since = runs // 4, 0.0
    done = 0

    async def go() -> None:
        nonlocal done, paused_since
        async with httpx.AsyncClient() as client:
            runtime = build_runtime(store, client, config=RuntimeConfig(), sim_sleep=False)
            while done < runs:
                n = min(chunk, runs - done)
                for i in range(done, done + n):
                    runtime.submit(run_spec(i, steps))
                w = runtime.worker("soak", concurrency=concurrency, poll_interval_s=0.005)
                t0 = time.perf_counter()
                await w.run(until_idle=True)
                result.chunk_rates.append(w.completed / (time.perf_counter() - t0))
                done += n
                if pause_s > 0 and not late.paused.is_set() and not paused_since and done >= pause_at:
                    late.paused.set()
                    paused_since = time.monotonic()
                if late.paused.is_set():
                    first = cast(RetentionStore, store).first_unread(store.get_cursor("late"))
                    if first is not None:
                        result.max_late_lag_s = max(result.max_late_lag_s, time.time() - first / 1e6)
                    if time.monotonic() - paused_since >= pause_s:
                        late.paused.clear()
                        result.late_pause_s = time.monotonic() - paused_since
                if done in checkpoints:
                    k = min(len(result.chunk_rates), max(3, len(result.chunk_rates) // 10))
                    rate = sum(result.chunk_rates[-k:]) / k
                    outbox, left = target.rows()
                    result.points.append(Point(done, target.size_bytes(), outbox, left, rate))
                    print(f"  {'on ' if retention_on else 'off'} {done:>7} runs: {target.size_bytes() / 1e6:8.1f} MB,"
                          f" outbox {outbox:>8}, runs {left:>7}, {rate:7.0f} steps/s", flush=True)

    asyncio.run(go())
    late.paused.clear()
    if service is not None:
        service.stop()
    for r in (sink, late):
        r.stop.set()
        r.join(30)
        r.drain()
    result.events = sink.count
    same = (sink.count, sink.checksum) == (late.count, late.checksum)
    result.readers_ok = (f"late reader read {late.count} of {sink.count} events, checksum "
                         f"{'equal' if same else 'DIFFERENT'}, {late.duplicates_or_gaps} out of order")
    store.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200_000, help="runs submitted and executed (default 200000)")
    p.add_argument("--steps", type=int, default=2, help="no-op steps per run (default 2)")
    p.add_argument("--chunk", type=int, default=2000, help="runs submitted before each worker drain (default 2000)")
    p.add_argument("--checkpoints", default="20000,100000,200000", help="run counts to report at")
    p.add_argument("--baseline-runs", type=int, default=100_000,
                   help="runs of the retention-off baseline (default 100000, at most --runs)")
    p.add_argument("--outbox-window", type=float, default=5.0, help="outbox retention in seconds (default 5)")
    p.add_argument("--run-window", type=float, default=10.0, help="run retention in seconds (default 10)")
    p.add_argument("--lag-limit", type=float, default=60.0, help="reader lag limit in seconds (default 60)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between retention passes (default 1)")
    p.add_argument("--pause-s", type=float, default=10.0, help="how long the late reader stops (default 10)")
    p.add_argument("--concurrency", type=int, default=32, help="steps executed at once (default 32)")
    p.add_argument("--pg", action="store_true", help="also run on PostgreSQL")
    p.add_argument("--dsn", default=os.environ.get("FLEETFORGE_TEST_PG_DSN", DEFAULT_DSN), help="PostgreSQL DSN")
    a = p.parse_args()
    checkpoints = sorted({c for c in (int(x) for x in a.checkpoints.split(",")) if c <= a.runs} | {a.runs})
    settings = RetentionSettings(outbox_window_s=a.outbox_window, run_window_s=a.run_window,
                                 reader_lag_limit_s=a.lag_limit, interval_s=a.interval)
    baseline_runs = min(a.baseline_runs, a.runs)
    for backend in ["sqlite", *(["postgres"] if a.pg else [])]:
        print(f"{backend}: {a.runs} runs x {a.steps} no-op steps, windows outbox {a.outbox_window:g}s / runs "
              f"{a.run_window:g}s, retention every {a.interval:g}s", flush=True)
        results = []
        for on, n in ((True, a.runs), (False, baseline_runs)):
            with make_target(backend, a.dsn) as target:
                results.append(soak(target, runs=n, steps=a.steps, chunk=a.chunk,
                                    checkpoints=[c for c in checkpoints if c <= n], retention_on=on,
                                    settings=settings, pause_s=a.pause_s if on else 0.0,
                                    concurrency=a.concurrency))
        on, off = results
        start = sum(on.chunk_rates[:3]) / max(1, len(on.chunk_rates[:3]))
        base = {pt.runs: pt for pt in off.points}
        print(f"\n{backend}  (retention on | off)")
        print(f"{'runs':>8} {'size MB on':>11} {'off':>8} {'outbox on':>10} {'off':>9} {'runs on':>8} "
              f"{'steps/s on':>11} {'off':>7} {'on vs start':>12}")
        for pt in on.points:
            b = base.get(pt.runs)
            print(f"{pt.runs:>8} {pt.size / 1e6:>11.1f} {b.size / 1e6 if b else float('nan'):>8.1f} "
                  f"{pt.outbox:>10} {b.outbox if b else '-':>9} {pt.runs_left:>8} {pt.steps_per_s:>11.0f} "
                  f"{b.steps_per_s if b else float('nan'):>7.0f} {pt.steps_per_s / start:>11.0%}")
        print(f"start: {start:.0f} steps/s (first chunks, retention on)")
        print(f"late reader: stopped {on.late_pause_s:.0f}s (lag up to {on.max_late_lag_s:.0f}s, limit "
              f"{a.lag_limit:g}s); {on.readers_ok}\n", flush=True)


if __name__ == "__main__":
    main()
