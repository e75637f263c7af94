"""Runtime throughput and memory with the trace exporters off versus on, healthy and failing.

Workload: the demo fleet (`core.demo.demo_fleet`: LLM, tool and http steps, retries, guardrails), no
simulated sleeps, one in-process worker, fresh SQLite file per trial. In every mode except `off`,
the LangSmith, Langfuse and Phoenix exporters run in the same process (`start_exporters`), reading
the same outbox while the worker runs, and all point at one loopback platform server that runs in
its own process and answers as the mode says:

- off:      no exporter (the baseline);
- ok:       200 to everything;
- 500:      HTTP 500 to everything;
- 429:      HTTP 429 with `Retry-After: 1`;
- 401:      HTTP 401 (the exporters park after one request);
- hang:     accepts the request and never answers (requests time out after 2 s);
- refuse:   nothing listens on the port;
- ok-proc:  200 to everything, but the exporters run in a separate process on the same SQLite file
            (what `fleetforge exporters run` does), so they take no CPU time from the runtime's
            interpreter.

Each trial first runs a few warm-up runs so that the exporters have met their platform (delivered,
retried or paused) before the measured fleet starts: an outage is in progress, not beginning.
Modes alternate within each round; figures are medians over the rounds. Printed per mode: steps/s
(wall clock, over the worker's drain only), the change against `off` from the same rounds, the
process CPU time per step (all threads), the exporter threads' CPU time as a share of the rest of
the process's (the figure least disturbed by other load on the machine: it bounds the slowdown of
a CPU-bound runtime), spans delivered and retries, the deepest exporter queue
seen (groups; the bound is `queue_size`), open runs buffered, and the process RSS growth.

Run `python bench/exporters/bench.py --help`; the defaults finish in about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.devstack.webhook import WebhookServer
from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.readers.traces import ExporterSet, start_exporters
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime

MODES = ("off", "ok", "500", "429", "401", "hang", "refuse", "ok-proc")
QUEUE_SIZE = 1000
WARM_RUNS = 8


def serve(mode: str, port: int) -> None:
    """The platform server (runs in a child process)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if mode == "hang":
                time.sleep(3600)
                return
            status = {"ok": 200, "500": 500, "429": 429, "401": 401}[mode]
            self.send_response(status)
            if mode == "429":
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def manifests(folder: Path) -> Path:
    (folder / "exporters").mkdir(parents=True, exist_ok=True)
    for name in ("langsmith", "langfuse", "phoenix"):
        (folder / "exporters" / f"{name}.toml").write_text(
            f'name = "{name}"\n[delivery]\ntimeout_s = 2\nqueue_size = {QUEUE_SIZE}\n')
    return folder


def settle(exporters: ExporterSet) -> None:
    """Wait (at most 10 s) until every exporter met its platform: delivered, retried or paused."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(e.info.spans_delivered or e.info.retries or e.info.state == "auth_failed"
               for e in exporters.exporters):
            return
        exporters.wake()
        time.sleep(0.05)


def exporter_cpu(exporters: ExporterSet | None) -> float:
    """CPU seconds used so far by the exporters' threads (from /proc, per thread)."""
    total = 0.0
    for e in exporters.exporters if exporters else ():
        for t in e._threads:
            try:
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def trial(mode: str, runs: int, seed: int, server_url: str, plugins: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.db")
        store.migrate()
        hook = WebhookServer().start()
        env = {"FLEETFORGE_TRACE_EXPORTERS": "langsmith,langfuse,phoenix", "FLEETFORGE_PLUGINS_DIR": str(plugins),
               "LANGSMITH_API_KEY": "bench-ls-key", "LANGSMITH_API_URL": server_url,
               "LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "bench-lf-key", "LANGFUSE_BASE_URL": server_url,
               "PHOENIX_API_KEY": "bench-px-key", "PHOENIX_BASE_URL": server_url}
        exporters: ExporterSet | None = None
        children: list[subprocess.Popen[bytes]] = []
        peak = {"queue": 0, "open_runs": 0}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05) and exporters is not None:
                for e in exporters.exporters:
                    peak["queue"] = max(peak["queue"], len(e.loop._pending))  # events read, not yet delivered
                    asm = e.reader._asm
                    if asm is not None:
                        peak["open_runs"] = max(peak["open_runs"], asm.open_runs)

        async def go() -> tuple[float, float, float, int]:
            nonlocal exporters
            async with httpx.AsyncClient() as client:
                executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()),
                                            prices=PriceTable(), llm_base_url=None, llm_api_key=None,
                                            sim_sleep=False)
                rt = Runtime(store, executors=executors, packs=default_packs())
                fleet = [json.loads(json.dumps(spec).replace(WEBHOOK_PLACEHOLDER, hook.base_url))
                         for spec in demo_fleet(runs + WARM_RUNS, seed)]
                for spec in fleet[:WARM_RUNS]:  # the exporters meet their platform on these first
                    rt.submit(spec)
                await rt.worker("warm", concurrency=16, poll_interval_s=0.01).run(until_idle=True)
                if mode == "ok-proc":
                    child = subprocess.Popen([sys.executable, __file__, "--export", str(Path(tmp) / "state.db")],
                                             env={**os.environ, **env}, stdout=subprocess.PIPE)
                    assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
                    children.append(child)
                elif mode != "off":
                    exporters = start_exporters(SqliteStore(Path(tmp) / "state.db"), env)
                    threading.Thread(target=watch, daemon=True).start()
                    settle(exporters)
                for spec in fleet[WARM_RUNS:]:
                    rt.submit(spec)
                worker = rt.worker("bench", concurrency=16, poll_interval_s=0.01)
                ex0 = exporter_cpu(exporters)
                cpu0, t0 = time.process_time(), time.perf_counter()
                await worker.run(until_idle=True)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                return wall, cpu, exporter_cpu(exporters) - ex0, worker.completed

        rss0 = rss_mb()
        wall, cpu, ex_cpu, steps = asyncio.run(go())
        rss1 = rss_mb()
        done.set()
        delivered = retries = 0
        for child in children:
            child.send_signal(signal.SIGTERM)
            out, _ = child.communicate(timeout=60)
            delivered = int(out.split()[-1])
        if exporters is not None:
            if mode == "ok":
                exporters.wait_idle(30)
            delivered = sum(e.info.spans_delivered for e in exporters.exporters)
            retries = sum(e.info.retries for e in exporters.exporters)
            exporters.stop(0.5 if mode != "ok" else 10)
        hook.stop()
        store.close()
        return {"steps_s": steps / wall, "cpu_ms_step": cpu / steps * 1000, "steps": steps,
                "exporter_share": ex_cpu / max(cpu - ex_cpu, 1e-9) * 100,
                "delivered": delivered, "retries": retries, "queue": peak["queue"],
                "open_runs": peak["open_runs"], "rss_mb": rss1 - rss0}


def export(db: str) -> None:
    """Run the exporters over `db` until SIGTERM, then drain and print the spans delivered (child process)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running = start_exporters(SqliteStore(Path(db)))
    print("ready", flush=True)
    stop.wait()
    running.wait_idle(30)
    running.stop(10)
    print(sum(e.info.spans_delivered for e in running.exporters), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=80, help="runs per trial")
    p.add_argument("--rounds", type=int, default=3, help="rounds (every mode once per round)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    p.add_argument("--serve", nargs=2, metavar=("MODE", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--export", metavar="DB", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if args.export:
        export(args.export)
        return
    modes = args.modes.split(",")
    servers: dict[str, tuple[str, subprocess.Popen[bytes] | None]] = {}
    for mode in modes:
        if mode == "off":
            continue
        port = free_port()
        if mode == "refuse":
            servers[mode] = (f"http://127.0.0.1:{port}", None)
            continue
        proc = subprocess.Popen([sys.executable, __file__, "--serve", mode.removesuffix("-proc"), str(port)],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        servers[mode] = (f"http://127.0.0.1:{port}", proc)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        plugins = manifests(Path(tmp) / "plugins")
        trial("off", max(8, args.runs // 4), 1, "", plugins)  # warm-up
        try:
            for r in range(args.rounds):
                for mode in modes:
                    url = servers[mode][0] if mode in servers else ""
                    results[mode].append(trial(mode, args.runs, 100 + r, url, plugins))
        finally:
            for _, proc in servers.values():
                if proc is not None:
                    proc.kill()

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    base = med("off", "steps_s") if "off" in results else float("nan")
    print(f"runs/trial={args.runs} rounds={args.rounds} (medians); exporters: langsmith+langfuse+phoenix; "
          f"queue bound {QUEUE_SIZE} groups per exporter")
    print(f"{'mode':<8}{'steps/s':>9}{'vs off':>9}{'cpu ms/step':>13}{'exporter cpu':>14}{'spans sent':>12}"
          f"{'retries':>9}{'max queue':>11}{'open runs':>11}{'rss +MB':>9}")
    for mode in modes:
        change = (med(mode, "steps_s") / base - 1) * 100
        print(f"{mode:<8}{med(mode, 'steps_s'):>9.0f}{change:>+8.1f}%{med(mode, 'cpu_ms_step'):>13.3f}"
              f"{med(mode, 'exporter_share'):>13.1f}%"
              f"{med(mode, 'delivered'):>12.0f}{med(mode, 'retries'):>9.0f}{max(x['queue'] for x in results[mode]):>11}"
              f"{max(x['open_runs'] for x in results[mode]):>11}{med(mode, 'rss_mb'):>9.1f}")


if __name__ == "__main__":
    main()
