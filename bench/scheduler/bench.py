"""No-op steps per second end to end, on SQLite and PostgreSQL, beside PgQueuer on the same server.

Our side: runs of 10 independent `noop` tool steps. Every step is claimed (budget reservation,
attempt row, `budget_reserved` + `step_started` events), executed by the tool executor, and
completed (ledger reconciliation, `budget_reconciled` + `tool_call` + `step_succeeded` events,
run status). Two variants:

- presubmitted: a fixed number of runs is stored first, then the workers drain them (timed from
  the start signal to the last step committed);
- concurrent: one submitter stores runs (one transaction per run of 10 steps) while the workers
  execute them, for a fixed duration (the shape of PgQueuer's throughput benchmark).

Workers are `fleetforge.core.worker.Worker`s, either in this process (one asyncio loop; each worker
has its own database thread) or one process each (--mode procs). Counts come from the database:
succeeded attempts in the ledger and outbox rows, read when the clock stops.

PgQueuer is driven the way its own `tools/benchmark.py` throughput strategy drives it: one enqueuer
with batches of 10 (entrypoints `syncfetch`/`asyncfetch`, random order), five dequeue workers with
batch size 10, each on its own psycopg async connection, a fixed duration, uvloop, rate = jobs
executed / elapsed. PgQueuer >= 1.x only accepts async entrypoints, so `syncfetch` hands its
counter update to a thread (as its error message tells sync users to do). Its tables live in their
own schema (PGQUEUER_SCHEMA) with a prefix, ours in another schema, so nothing collides.

Run `python bench/scheduler/bench.py --help` for the flags; the defaults finish in under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.runtime import Runtime
from fleetforge.ports.store import Store

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
STEPS_PER_RUN = 10
PGQ_SCHEMA = "ffbench_pgqueuer"
PGQ_PREFIX = "ffbench_"


# -- our side ------------------------------------------------------------------------------------


def run_spec(i: int) -> dict[str, Any]:
    """A run of STEPS_PER_RUN independent no-op tool steps."""
    return {"workspace": "bench", "app": "noop", "seed": i,
            "steps": [{"id": f"s{k}", "type": "tool", "inputs": {"tool": "noop", "args": {}}}
                      for k in range(STEPS_PER_RUN)]}


@dataclass(frozen=True)
class Target:
    """Where our store lives: a SQLite file, or a schema of a PostgreSQL database."""

    backend: str
    sqlite_path: str = ""
    dsn: str = ""
    schema: str = ""

    def open(self, pool_size: int = 4) -> Store:
        if self.backend == "sqlite":
            return SqliteStore(self.sqlite_path)
        return PostgresStore(self.dsn, schema=self.schema, pool_size=pool_size)

    def counts(self) -> tuple[int, int]:
        """(succeeded attempts, outbox rows), read directly."""
        done, events = self._ask("SELECT count(*) FROM attempts WHERE status = 'succeeded'",
                                 "SELECT count(*) FROM outbox")
        return done, events

    def drained(self) -> bool:
        """No step left to run: one look at the open-steps index, so that waiting for the drain costs the
        database next to nothing (counting every attempt 50 times a second took a tenth of the CPU)."""
        (open_steps,) = self._ask("SELECT count(*) FROM (SELECT 1 FROM steps WHERE status IN "
                                  "('pending', 'queued', 'running') LIMIT 1) AS s")
        return open_steps == 0

    def _ask(self, *queries: str) -> list[int]:
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(self.sqlite_path, timeout=60)) as c:
                return [int(c.execute(q).fetchone()[0]) for q in queries]
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            rows = [c.execute(q).fetchone() for q in queries]
            return [int(r[0]) for r in rows if r is not None]


@contextlib.contextmanager
def make_target(backend: str, dsn: str) -> Iterator[Target]:
    """A fresh, migrated store; removed afterwards."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="ffbench-")
        target = Target("sqlite", sqlite_path=str(Path(folder) / "state.db"))
        store = target.open()
        store.migrate()
        store.close()
        try:
            yield target
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    target = Target("postgres", dsn=dsn, schema=f"ffbench_{uuid.uuid4().hex[:10]}")
    pg = PostgresStore(dsn, schema=target.schema)
    pg.migrate()
    try:
        yield target
    finally:
        pg.drop_schema()
        pg.close()


def make_runtime(store: Store, client: httpx.AsyncClient) -> Runtime:
    return build_runtime(store, client, config=RuntimeConfig(), sim_sleep=False)


def submit_runs(target: Target, n: int, start: int = 0) -> None:
    store = target.open()

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            runtime = make_runtime(store, client)
            for i in range(start, start + n):
                runtime.submit(run_spec(i))

    asyncio.run(go())
    store.close()


class Submitter(threading.Thread):
    """The concurrent variant's enqueuer: one run (10 steps, one transaction) after another, from `go`. Its
    store and runtime are made before (`ready`), as the workers are started before the clock starts."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True, name="submitter")
        self.target = target
        self.ready = threading.Event()
        self.go = threading.Event()
        self.stop = threading.Event()
        self.submitted = 0

    def run(self) -> None:
        store = self.target.open()

        async def go() -> None:
            async with httpx.AsyncClient() as client:
                runtime = make_runtime(store, client)
                self.ready.set()
                self.go.wait()
                for i in itertools.count(1_000_000):
                    if self.stop.is_set():
                        return
                    runtime.submit(run_spec(i))
                    self.submitted += 1

        asyncio.run(go())
        store.close()


async def _work(target: Target, workers: int, concurrency: int, poll_ms: int, go: Callable[[], Any],
                stop: Callable[[], Any], tag: str) -> None:
    """Run `workers` Workers in this loop: start when `go()` returns, finish when `stop()` returns."""
    store = target.open(pool_size=workers + 2)
    async with httpx.AsyncClient() as client:
        runtime = make_runtime(store, client)
        ws = [runtime.worker(f"{tag}-{k}", concurrency=concurrency, poll_interval_s=poll_ms / 1000)
              for k in range(workers)]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go)
        halt = asyncio.Event()

        async def watch() -> None:
            await loop.run_in_executor(None, stop)
            halt.set()

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(w.run(stop=halt) for w in ws))
        await watcher
    store.close()


def _child(target: Target, index: int, concurrency: int, poll_ms: int, ready: MpEvent, go: MpEvent,
           stop: MpEvent) -> None:
    def wait_go() -> None:
        ready.set()
        go.wait()

    asyncio.run(_work(target, 1, concurrency, poll_ms, wait_go, stop.wait, f"p{index}"))


@dataclass
class Result:
    backend: str
    variant: str
    workers: str
    steps: int
    events: int
    elapsed_s: float
    note: str = ""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s else 0.0


def measure(target: Target, *, variant: str, mode: str, workers: int, concurrency: int, poll_ms: int,
            duration_s: float, runs: int) -> Result:
    """One measurement: start the workers, open the window, count what committed inside it."""
    total = runs * STEPS_PER_RUN
    if variant == "presubmitted":
        submit_runs(target, runs)
    stop_flag = threading.Event()
    go_flag = threading.Event()
    procs: list[Any] = []
    thread: threading.Thread | None = None
    if mode == "procs":
        ctx = mp.get_context("spawn")
        mp_go, mp_stop = ctx.Event(), ctx.Event()
        readies = [ctx.Event() for _ in range(workers)]
        procs = [ctx.Process(target=_child,
                             args=(target, k, concurrency, poll_ms, readies[k], mp_go, mp_stop))
                 for k in range(workers)]
        for p in procs:
            p.start()
        if not all(r.wait(120) for r in readies):
            for p in procs:
                p.kill()
            raise RuntimeError("a worker process did not start within 120s; see its traceback above")
        release, halt = mp_go.set, mp_stop.set
    else:
        ready = threading.Event()

        def go() -> None:
            ready.set()
            go_flag.wait()

        thread = threading.Thread(target=lambda: asyncio.run(
            _work(target, workers, concurrency, poll_ms, go, stop_flag.wait, "w")), daemon=True)
        thread.start()
        if not ready.wait(120):
            raise RuntimeError("the in-process workers did not start within 120s")
        release, halt = go_flag.set, stop_flag.set

    submitter = Submitter(target) if variant == "concurrent" else None
    if submitter is not None:
        submitter.start()
        if not submitter.ready.wait(120):
            raise RuntimeError("the submitter did not start within 120s")
    done0, events0 = target.counts()
    t0 = time.perf_counter()
    release()
    if submitter is not None:
        submitter.go.set()
    if variant == "presubmitted":
        while not target.drained() and time.perf_counter() - t0 < duration_s * 2:
            time.sleep(0.02)
    else:
        time.sleep(duration_s)
    done, events = target.counts()
    elapsed = time.perf_counter() - t0
    if submitter is not None:
        submitter.stop.set()
    halt()
    if submitter is not None:
        submitter.join(60)
    for p in procs:
        p.join(60)
        if p.exitcode is None:
            p.kill()
    if thread is not None:
        thread.join(60)
    note = "" if variant == "concurrent" or done >= total else f"drain cut at {elapsed:.0f}s"
    if submitter is not None:
        note = f"{submitter.submitted * STEPS_PER_RUN} steps submitted"
    label = f"{workers} {'proc' if mode == 'procs' else 'task'}{'s' if workers > 1 else ''} x{concurrency}"
    return Result(target.backend, variant, label, done - done0, events - events0, elapsed, note)


# -- PgQueuer ------------------------------------------------------------------------------------


async def _pgqueuer(dsn: str, duration_s: float, dequeue: int,
                    batch: int) -> tuple[tuple[int, float], tuple[int, float]]:
    """(jobs executed, seconds) in the window, and the same with its shutdown."""
    from pgqueuer import PgQueuer, PsycopgDriver, Queries
    from pgqueuer.models import Job

    conns: list[psycopg.AsyncConnection[Any]] = []

    async def connect() -> psycopg.AsyncConnection[Any]:
        conns.append(await psycopg.AsyncConnection.connect(dsn, autocommit=True))
        return conns[-1]

    admin = await connect()
    await admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(PGQ_SCHEMA)))
    await Queries(PsycopgDriver(admin)).install()
    executed = 0

    def count() -> None:
        nonlocal executed
        executed += 1

    shutdown = asyncio.Event()
    pgqs = []
    for _ in range(dequeue):
        pgq = PgQueuer(PsycopgDriver(await connect()))

        @pgq.entrypoint("asyncfetch")
        async def asyncfetch(job: Job) -> None:
            count()

        @pgq.entrypoint("syncfetch")
        async def syncfetch(job: Job) -> None:
            await asyncio.to_thread(count)

        pgqs.append(pgq)
    counter = itertools.count()

    async def producer() -> None:
        queries = Queries(PsycopgDriver(await connect()))
        entrypoints = ["syncfetch", "asyncfetch"] * batch
        while not shutdown.is_set():
            await queries.enqueue(random.sample(entrypoints, k=batch),
                                  [f"{next(counter)}".encode() for _ in range(batch)], [0] * batch)

    window: list[tuple[int, float]] = []

    async def timer() -> None:
        await asyncio.sleep(duration_s)
        window.append((executed, time.perf_counter() - t0))
        shutdown.set()
        for pgq in pgqs:
            pgq.shutdown.set()

    t0 = time.perf_counter()
    await asyncio.gather(producer(), timer(), *(pgq.run(batch_size=batch) for pgq in pgqs))
    elapsed = time.perf_counter() - t0
    await admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(PGQ_SCHEMA)))
    for conn in conns:
        await conn.close()
    return window[0], (executed, elapsed)


def measure_pgqueuer(dsn: str, duration_s: float) -> Result:
    os.environ["PGQUEUER_SCHEMA"] = PGQ_SCHEMA
    os.environ["PGQUEUER_PREFIX"] = PGQ_PREFIX
    import logging

    import uvloop
    from pgqueuer.domain.settings import db_settings

    db_settings.cache_clear()
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    (jobs, window), (total, elapsed) = uvloop.run(_pgqueuer(dsn, duration_s, dequeue=5, batch=10))
    return Result("postgres", "pgqueuer", "5 dequeue x batch 10", jobs, 0, window,
                  f"1 enqueuer, batches of 10; {total / elapsed:,.0f}/s counting its shutdown")


# -- main ----------------------------------------------------------------------------------------


def checkpoint(dsn: str) -> None:
    """Write PostgreSQL's dirty pages out now (needs a superuser or pg_checkpoint), so that no measurement
    pays for the checkpoint the WAL of the one before it would otherwise trigger in its window."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True, connect_timeout=3) as c:
        c.execute("CHECKPOINT")


def pg_reachable(dsn: str) -> str | None:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def table(results: list[Result], baseline: float | None) -> str:
    head = ("backend", "variant", "workers", "steps", "seconds", "steps/s", "events/s written",
            "vs PgQueuer jobs/s", "note")
    rows = [head]
    for r in results:
        events = "-" if r.variant == "pgqueuer" else f"{r.events_per_s:,.0f}"
        ratio = f"{r.steps_per_s / baseline:.2f}x" if baseline else "-"
        rows.append((r.backend, r.variant, r.workers, f"{r.steps:,}", f"{r.elapsed_s:.1f}",
                     f"{r.steps_per_s:,.0f}", events, ratio, r.note))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=float(os.environ.get("FFBENCH_DURATION", 6)),
                   help="Seconds per timed measurement (concurrent variants, PgQueuer) "
                        "[env FFBENCH_DURATION]")
    p.add_argument("--runs", type=int, default=int(os.environ.get("FFBENCH_RUNS", 600)),
                   help="Runs (x10 steps) pre-submitted for the presubmitted variant; the drain is cut at "
                        "2 x --duration [env FFBENCH_RUNS]")
    p.add_argument("--workers", type=int, default=int(os.environ.get("FFBENCH_WORKERS", 2)),
                   help="Workers (asyncio tasks or processes) [env FFBENCH_WORKERS]")
    p.add_argument("--mode", choices=("procs", "inproc"), default=os.environ.get("FFBENCH_MODE", "procs"),
                   help="procs: one process per worker; inproc: all workers in this process "
                        "[env FFBENCH_MODE]")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("FFBENCH_CONCURRENCY", 128)),
                   help="Steps in flight per worker [env FFBENCH_CONCURRENCY]")
    p.add_argument("--poll-ms", type=int, default=int(os.environ.get("FFBENCH_POLL_MS", 10)),
                   help="Worker poll interval in ms (how often a busy worker claims; an idle one is also "
                        "woken) [env FFBENCH_POLL_MS]")
    p.add_argument("--backends", default=os.environ.get("FFBENCH_BACKENDS", "sqlite,postgres"),
                   help="Comma-separated: sqlite, postgres [env FFBENCH_BACKENDS]")
    p.add_argument("--variants", default=os.environ.get("FFBENCH_VARIANTS", "presubmitted,concurrent"),
                   help="Comma-separated: presubmitted, concurrent [env FFBENCH_VARIANTS]")
    p.add_argument("--dsn", default=os.environ.get("FLEETFORGE_BENCH_PG_DSN", DEFAULT_DSN),
                   help="PostgreSQL for both us and PgQueuer [env FLEETFORGE_BENCH_PG_DSN]")
    p.add_argument("--no-pgqueuer", action="store_true", help="Skip the PgQueuer baseline.")
    args = p.parse_args(argv)
    bad = [b for b in args.backends.split(",") if b not in ("sqlite", "postgres")]
    bad += [v for v in args.variants.split(",") if v not in ("presubmitted", "concurrent")]
    if bad or args.workers < 1 or args.duration <= 0 or args.runs < 1 or args.concurrency < 1:
        p.error(f"invalid values: {bad or 'workers/duration/runs/concurrency must be positive'}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = args.backends.split(",")
    pg_problem = pg_reachable(args.dsn) if "postgres" in backends or not args.no_pgqueuer else None
    if pg_problem:
        print(f"PostgreSQL unreachable ({pg_problem}): PostgreSQL rows and the PgQueuer baseline are skipped",
              file=sys.stderr)
    results: list[Result] = []
    baseline: float | None = None
    if not args.no_pgqueuer and not pg_problem:
        print(f"PgQueuer: {args.duration:g}s ...", file=sys.stderr, flush=True)
        checkpoint(args.dsn)
        r = measure_pgqueuer(args.dsn, args.duration)
        baseline = r.steps_per_s
        results.append(r)
    for backend in backends:
        if backend == "postgres" and pg_problem:
            continue
        for variant in args.variants.split(","):
            print(f"{backend} {variant} ...", file=sys.stderr, flush=True)
            if not pg_problem:
                checkpoint(args.dsn)
            with make_target(backend, args.dsn) as target:
                results.append(measure(target, variant=variant, mode=args.mode, workers=args.workers,
                                       concurrency=args.concurrency, poll_ms=args.poll_ms,
                                       duration_s=args.duration, runs=args.runs))
    print(table(results, baseline))
    print(f"\nsteps = succeeded attempts committed in the window; events = outbox rows committed in it; "
          f"{STEPS_PER_RUN} noop steps per run; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
