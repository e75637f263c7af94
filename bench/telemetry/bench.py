"""Worker throughput with the telemetry reader off versus on, and the reader's own cost; plus a soak.

Telemetry is a reader of the outbox (adapters/readers/telemetry/reader.py), not a callback in the worker: the worker's
hot path is the same in every mode. Workload: runs of 3 simulated LLM steps and 1 tool step in a chain (no
simulated sleeps), with a token and cost budget and the PII pack. Each round stores `--runs` runs in a fresh
SQLite file, then one in-process worker drains them; steps/s is completed attempts over the drain time.
Modes:

- off:       the worker alone;
- reader:    the worker, and the telemetry reader (metrics + spans into an exporter that drops them) in a
             thread of the same process, as `fleetforge worker` runs it by default (same GIL);

Printed per mode (medians): worker steps/s, and the reader's CPU time (its thread) beside the worker
thread's CPU time for the same round, and per event. Then, with `--soak N[,N...]`, runs are worked and
read in chunks with a short per-run series retention (`--series-retention`, seconds) and the scrape size,
series count and RSS are printed at each checkpoint.

Run `python bench/telemetry/bench.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.readers.telemetry import EventIdGenerator, Telemetry
from fleetforge.adapters.readers.telemetry.reader import READER_OPTIONS, TelemetryReader
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.readers import ReaderLoop
from fleetforge.core.runtime import Runtime
from fleetforge.ports.store import OutboxRecord


def spec(i: int) -> dict[str, Any]:
    def llm(step_id: str, *deps: str) -> dict[str, Any]:
        return {"id": step_id, "type": "llm", "depends_on": list(deps),
                "inputs": {"model": "sim-small", "prompt": f"summarize ticket {i} " * 10, "output_tokens": 60}}

    return {"workspace": "bench", "app": f"app{i % 4}", "seed": i, "budget": {"tokens": 50_000, "cost": 5.0},
            "packs": [{"name": "pii_redaction"}],
            "steps": [llm("plan"), {"id": "lookup", "type": "tool", "depends_on": ["plan"],
                                    "inputs": {"tool": "calculator", "args": {"expression": f"{i}*2"}}},
                      llm("draft", "lookup"), llm("review", "draft")]}


class DropSpans(SpanExporter):
    """Counts spans and drops them."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class TimedReader(TelemetryReader):
    """Accumulates the CPU time of the reader's thread spent handling batches."""

    seconds = 0.0
    events = 0

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        t0 = time.thread_time()
        super().handle(records)
        self.seconds += time.thread_time() - t0
        self.events += len(records)


def telemetry_with_spans() -> tuple[Telemetry, DropSpans]:
    base = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    spans = DropSpans()
    provider = TracerProvider(id_generator=EventIdGenerator())
    provider.add_span_processor(BatchSpanProcessor(spans))
    full = Telemetry(meter_provider=base.meter_provider, tracer_provider=provider, registry=base.registry)
    full.settings = base.settings
    return full, spans


def reader_for(store: SqliteStore, telemetry: Telemetry, retention_s: float) -> TimedReader:
    reader = TimedReader(store, telemetry.meter_generation, spans=telemetry.spans, series_retention_s=retention_s,
                         sweep_every_s=min(5.0, retention_s))
    assert telemetry.registry is not None
    reader.expose_on(telemetry.registry)
    return reader


async def work(store: SqliteStore, first: int, runs: int, concurrency: int) -> tuple[int, float, float]:
    """Store runs first..first+runs, then drain them: (attempts completed, wall s, process CPU s)."""
    async with httpx.AsyncClient() as client:
        executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()), prices=PriceTable(),
                                    llm_base_url=None, llm_api_key=None, sim_sleep=False)
        runtime = Runtime(store, executors=executors, packs=default_packs())
        for i in range(first, first + runs):
            runtime.submit(spec(i))
        worker = runtime.worker("bench", concurrency=concurrency, poll_interval_s=0.01)
        t0, c0 = time.perf_counter(), time.process_time()
        await worker.run(until_idle=True)
        return worker.completed, time.perf_counter() - t0, time.process_time() - c0


def one_round(runs: int, concurrency: int, mode: str, db: Path) -> tuple[int, float, float, TimedReader | None]:
    store = SqliteStore(db)
    store.migrate()
    reader: TimedReader | None = None
    stop = threading.Event()
    thread = None
    telemetry = None
    if mode == "reader":
        telemetry, _ = telemetry_with_spans()
        reader = reader_for(store, telemetry, 900.0)
        loop = ReaderLoop(store, reader, holder="bench", options=READER_OPTIONS)
        reader.lease_valid = loop.lease.valid
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        thread.start()
    done, elapsed, cpu = asyncio.run(work(store, 0, runs, concurrency))
    if thread is not None and reader is not None:
        while store.outbox_backlog(reader.name)[0]:  # let the reader finish what the round wrote
            time.sleep(0.05)
        stop.set()
        thread.join()
    if telemetry is not None:
        telemetry.shutdown()
    store.close()
    return done, elapsed, cpu, reader


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryTrace:
    """tracemalloc snapshots at each checkpoint; prints the allocation sites that grew most since the last."""

    def __init__(self, top: int, frames: int = 4) -> None:
        self.top = top
        tracemalloc.start(frames)
        self.last = self.snapshot()

    @staticmethod
    def snapshot() -> tracemalloc.Snapshot:
        gc.collect()
        return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])

    def report(self) -> None:
        now = self.snapshot()
        traced, _ = tracemalloc.get_traced_memory()
        print(f"  traced {traced / 2**20:.1f} MiB; top growth since the last checkpoint:")
        for stat in now.compare_to(self.last, "traceback")[: self.top]:
            if stat.size_diff <= 0:
                break
            print(f"  {stat.size_diff / 1024:>+10.0f} KiB {stat.count_diff:>+8} blocks")
            for line in stat.traceback.format(limit=6, most_recent_first=True):
                print(f"      {line.strip()}")
        self.last = now


def soak(points: list[int], concurrency: int, retention_s: float, db: Path, trace_memory: int = 0) -> None:
    store = SqliteStore(db)
    store.migrate()
    telemetry, _ = telemetry_with_spans()
    reader = reader_for(store, telemetry, retention_s)
    loop = ReaderLoop(store, reader, holder="bench", options=READER_OPTIONS)
    reader.lease_valid = loop.lease.valid
    loop.lease.start_renewing()
    address = telemetry.start_prometheus(port=0)
    assert address is not None
    memory = MemoryTrace(trace_memory) if trace_memory else None
    print(f"soak: per-run series retention {retention_s:g}s; checkpoints {points}")
    print(f"{'runs':>8}{'scrape KiB':>12}{'series':>9}{'RSS MiB':>9}{'ledger KiB':>12}{'reader us/event':>17}")
    done = 0
    chunk = 1000
    for target in points:
        while done < target:
            n = min(chunk, target - done)
            asyncio.run(work(store, done, n, concurrency))
            done += n
            while loop.step():
                pass
        time.sleep(retention_s)  # the runs of the last chunk leave their window
        reader.sweep(force=True)
        body = httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=None).text
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        print(f"{done:>8}{len(body) / 1024:>12.0f}{series:>9}{rss_mib():>9.0f}{len(reader.checkpoint()) / 1024:>12.0f}"
              f"{reader.seconds / max(1, reader.events) * 1e6:>17.1f}")
        if memory is not None:
            memory.report()
    loop.lease.release()
    telemetry.shutdown()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=150, help="runs per round (4 steps each)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating modes")
    parser.add_argument("--concurrency", type=int, default=16, help="worker concurrency")
    parser.add_argument("--soak", default="", help="comma-separated run counts to report at, e.g. 1000,10000,100000")
    parser.add_argument("--trace-memory", type=int, default=0, metavar="N",
                        help="soak: print the N allocation sites that grew most between checkpoints (tracemalloc)")
    parser.add_argument("--series-retention", type=float, default=5.0, help="per-run series retention in the soak (s)")
    args = parser.parse_args()
    modes = ("off", "reader")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    worker_cpu: dict[str, list[float]] = {m: [] for m in modes}
    reader_cpu: list[float] = []
    per_event: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.rounds:
            for r in range(args.rounds + 1):  # round 0 warms up and is not counted
                for mode in modes:
                    db = Path(tmp) / f"{mode}-{r}.db"
                    done, elapsed, cpu, reader = one_round(args.runs, args.concurrency, mode, db)
                    if r == 0:
                        continue
                    rates[mode].append(done / elapsed)
                    worker_cpu[mode].append(cpu - (reader.seconds if reader is not None else 0.0))
                    if reader is not None and reader.events:
                        reader_cpu.append(reader.seconds)
                        per_event.append(reader.seconds / reader.events * 1e6)
            base = statistics.median(rates["off"])
            print(f"workload: {args.runs} runs x 4 steps, concurrency {args.concurrency}, {args.rounds} rounds per "
                  "mode (median), SQLite, simulated LLM without sleeps")
            print(f"{'mode':<8}{'steps/s':>9}{'vs off':>9}{'worker CPU s':>14}{'reader CPU s':>14}"
                  f"{'reader us/event':>17}   rounds (steps/s)")
            for mode in modes:
                med = statistics.median(rates[mode])
                delta = "baseline" if mode == "off" else f"{(med / base - 1) * 100:+.1f}%"
                rcpu = f"{statistics.median(reader_cpu):.2f}" if mode == "reader" and reader_cpu else "-"
                rev = f"{statistics.median(per_event):.1f}" if mode == "reader" and per_event else "-"
                print(f"{mode:<8}{med:>9.0f}{delta:>9}{statistics.median(worker_cpu[mode]):>14.2f}{rcpu:>14}{rev:>17}"
                      f"   {', '.join(f'{x:.0f}' for x in rates[mode])}")
        if args.soak:
            soak([int(x) for x in args.soak.split(",")], args.concurrency, args.series_retention,
                 Path(tmp) / "soak.db", args.trace_memory)


if __name__ == "__main__":
    main()
