"""Runtime throughput with telemetry off versus on, same script, same workload, alternating rounds.

Workload: runs of 3 simulated LLM steps and 1 tool step in a chain (no simulated sleeps), with a
token and cost budget and the PII pack, so every event kind that feeds metrics occurs (budget
reservations and reconciliations, policy decisions, step starts, GenAI usage). Each round stores
`--runs` runs in a fresh SQLite file, then one in-process worker drains them; steps/s is completed
attempts over the drain time. Modes:

- off:      Runtime(observer=None), the baseline;
- metrics:  Telemetry.from_env() defaults (OpenTelemetry metrics through the Prometheus reader);
- +spans:   metrics plus a span per run, attempt and tool call through a BatchSpanProcessor into an
            exporter that drops them (the SDK's full cost, minus the network).

Printed per mode (medians): steps/s (wall clock; noisy on a shared machine), process CPU time per step
(all threads), the observer's CPU time per event, and the observer's share: its CPU time over the rest of
the same round's CPU time (the least noisy figure: both come from one round). Then one Prometheus
scrape of the last metrics round.

Run `python bench/telemetry/bench.py --help`; the defaults finish in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from fleetforge.adapters.executors.registry import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.otel import EventIdGenerator, Telemetry
from fleetforge.adapters.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.domain.envelope import Envelope

Observer = Callable[[list[Envelope]], None]


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


class Timed:
    """Wraps an observer and accumulates the CPU time of the calling thread spent in it."""

    def __init__(self, inner: Observer) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.events = 0

    def __call__(self, events: list[Envelope]) -> None:
        t0 = time.thread_time()
        self.inner(events)
        self.seconds += time.thread_time() - t0
        self.events += len(events)


async def one_round(runs: int, concurrency: int, observer: Observer | None, db: Path) -> tuple[int, float, float]:
    """Store `runs` runs, then drain them: (attempts completed, wall seconds, process CPU seconds)."""
    store = SqliteStore(db)
    store.migrate()
    async with httpx.AsyncClient() as client:
        executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()), prices=PriceTable(),
                                    llm_base_url=None, llm_api_key=None, sim_sleep=False)
        runtime = Runtime(store, executors=executors, packs=default_packs(), observer=observer)
        for i in range(runs):
            runtime.submit(spec(i))
        worker = runtime.worker("bench", concurrency=concurrency, poll_interval_s=0.01)
        t0, c0 = time.perf_counter(), time.process_time()
        await worker.run(until_idle=True)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.close()
    return worker.completed, elapsed, cpu


def make(mode: str) -> tuple[Observer | None, Telemetry | None, DropSpans | None]:
    if mode == "off":
        return None, None, None
    base = Telemetry.from_env(env={})
    if mode == "metrics":
        return Timed(base.observer), base, None
    spans = DropSpans()
    provider = TracerProvider(id_generator=EventIdGenerator())
    provider.add_span_processor(BatchSpanProcessor(spans))
    full = Telemetry(meter_provider=base.meter_provider, tracer_provider=provider, registry=base.registry)
    return Timed(full.observer), full, spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=150, help="runs per round (4 steps each)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating modes")
    parser.add_argument("--concurrency", type=int, default=16, help="worker concurrency")
    args = parser.parse_args()
    modes = ("off", "metrics", "+spans")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    cpu_per_step: dict[str, list[float]] = {m: [] for m in modes}
    per_event: dict[str, list[float]] = {m: [] for m in modes}
    share: dict[str, list[float]] = {m: [] for m in modes}  # observer CPU / the rest of the round's CPU
    last: Telemetry | None = None
    spans_seen = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms up and is not counted
            for mode in modes:
                observer, telemetry, spans = make(mode)
                done, elapsed, cpu = asyncio.run(one_round(args.runs, args.concurrency, observer,
                                                      Path(tmp) / f"{mode}-{r}.db"))
                if r == 0:
                    if telemetry is not None:
                        telemetry.shutdown()
                    continue
                rates[mode].append(done / elapsed)
                cpu_per_step[mode].append(cpu / done * 1e6)
                if isinstance(observer, Timed) and observer.events:
                    per_event[mode].append(observer.seconds / observer.events * 1e6)
                    share[mode].append(observer.seconds / (cpu - observer.seconds) * 100)
                if telemetry is not None:
                    telemetry.force_flush()
                    if spans is not None:
                        spans_seen = spans.count
                    if mode == "metrics":
                        if last is not None:
                            last.shutdown()
                        last = telemetry
                    else:
                        telemetry.shutdown()
    base = statistics.median(rates["off"])
    base_cpu = statistics.median(cpu_per_step["off"])
    print(f"workload: {args.runs} runs x 4 steps, concurrency {args.concurrency}, {args.rounds} rounds per mode "
          "(median), SQLite, simulated LLM without sleeps")
    print(f"{'mode':<9}{'steps/s':>9}{'vs off':>9}{'CPU us/step':>13}{'vs off':>9}{'observer us/event':>19}"
          f"{'observer share':>16}   rounds (steps/s)")
    for mode in modes:
        med, cpu = statistics.median(rates[mode]), statistics.median(cpu_per_step[mode])
        cost = f"{statistics.median(per_event[mode]):.1f}" if per_event[mode] else "-"
        part = f"{statistics.median(share[mode]):.1f}%" if share[mode] else "-"
        delta = "baseline" if mode == "off" else f"{(med / base - 1) * 100:+.1f}%"
        cpu_delta = "baseline" if mode == "off" else f"{(cpu / base_cpu - 1) * 100:+.1f}%"
        print(f"{mode:<9}{med:>9.0f}{delta:>9}{cpu:>13.0f}{cpu_delta:>9}{cost:>19}{part:>16}   "
              f"{', '.join(f'{x:.0f}' for x in rates[mode])}")
    print(f"spans exported in the last +spans round: {spans_seen}")
    if last is not None:
        address = last.start_prometheus(port=0)
        assert address is not None
        t0 = time.perf_counter()
        body = httpx.get(f"http://{address[0]}:{address[1]}/metrics").text
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        print(f"one scrape after {args.runs} runs: {len(body) / 1024:.0f} KiB, {series} series, "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        last.shutdown()


if __name__ == "__main__":
    main()
