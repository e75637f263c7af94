"""`fleetforge demo`: a realistic sample fleet, end to end, on the embedded stores."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetforge.adapters.cli.common import DataDirOpt, err, guard, out, print_json
from fleetforge.adapters.cli.dashboard import (
    AllowedHostOpt,
    HostOpt,
    PortOpt,
    allowed_hosts,
    serve_until_interrupted,
)
from fleetforge.adapters.cli.telemetry import start_telemetry
from fleetforge.adapters.cli.wiring import DEFAULT_DATA_DIR, build_runtime, config_from_env
from fleetforge.adapters.devstack.webhook import WebhookServer
from fleetforge.adapters.readers.clickhouse.backends import chdb_dir
from fleetforge.adapters.readers.clickhouse.embedded import EmbeddedAnalytics
from fleetforge.adapters.readers.traces import start_exporters
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.adapters.views.dashboard.app import Dashboard
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet
from fleetforge.core.ids import new_run_id
from fleetforge.core.simtime import SimulatedWindow
from fleetforge.core.summary import summary_from_store
from fleetforge.core.worker import Observer
from fleetforge.ports.analytics import AnalyticsError
from fleetforge.ports.store import Store

__all__ = ["register", "run_demo"]

STATE_FILES = ("state.db", "state.db-wal", "state.db-shm")


def _reset(data_dir: Path) -> None:
    """Remove the demo's own stores from `data_dir` (nothing else in it)."""
    for name in STATE_FILES:
        (data_dir / name).unlink(missing_ok=True)
    shutil.rmtree(data_dir / "clickhouse", ignore_errors=True)


def _fill(spec: dict[str, Any], webhook: str) -> dict[str, Any]:
    text = json.dumps(spec).replace(WEBHOOK_PLACEHOLDER, webhook)
    result: dict[str, Any] = json.loads(text)
    return result


async def run_demo(data_dir: Path, analytics: EmbeddedAnalytics, *, runs: int, seed: int, workers: int,
                   concurrency: int, progress: bool, observer: Observer | None = None,
                   window_s: int = 0) -> dict[str, Any]:
    """Submit the fleet and run it to completion with `workers` in-process workers while its events
    stream into embedded ClickHouse; return the ground-truth summary once everything is stored.

    With `window_s` > 0 the runs' events are dated over the `window_s` seconds before the demo started
    (see core.simtime); state rows and the outbox's own times stay real."""
    raw = SqliteStore(data_dir / "state.db")
    raw.migrate()
    started_us = time.time_ns() // 1_000
    window = SimulatedWindow(runs, seed, window_s * 1_000_000, started_us) if window_s > 0 else None
    store = window.store(raw) if window is not None else raw
    analytics.apply()
    analytics.start(raw)
    exporters = start_exporters(raw)  # FLEETFORGE_TRACE_EXPORTERS; nothing when unset
    webhook = WebhookServer().start()
    try:
        async with httpx.AsyncClient() as client:
            runtime = build_runtime(store, client, config=config_from_env(lease_ms=10_000), observer=observer)
            for index, spec in enumerate(demo_fleet(runs, seed)):
                run_id = new_run_id()
                if window is not None:
                    window.place(run_id, index, time.time_ns() // 1_000)
                runtime.submit(_fill(spec, webhook.base_url), run_id=run_id)
            pool = [runtime.worker(f"demo-{i}", concurrency=concurrency, poll_interval_s=0.02)
                    for i in range(workers)]
            work = asyncio.gather(*(w.run(until_idle=True) for w in pool))
            try:
                await _watch(store, runs, work, analytics.check_data_dir, progress=progress)
            except BaseException:
                work.cancel()  # the workers stop; their in-flight steps are retried by the next run
                await asyncio.gather(work, return_exceptions=True)
                raise
            await work
    finally:
        webhook.stop()
        analytics.stop()  # drains every committed event into ClickHouse
        exporters.stop(30.0)
    analytics.check_data_dir()
    summary = summary_from_store(raw)
    raw.close()
    return summary


async def _watch(store: Store, total: int, work: asyncio.Future[Any], check: Callable[[], None], *,
                 progress: bool) -> None:
    """Until `work` is done: `check()` that the data dirs are still there, and show progress."""
    columns = (TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False, disable=not progress) as bar:
        task = bar.add_task("runs", total=total)
        while not work.done():
            check()
            if progress:
                open_runs = await asyncio.to_thread(store.count_open_runs)
                bar.update(task, completed=total - open_runs)
            await asyncio.wait([work], timeout=0.2)  # type: ignore[list-item]
        bar.update(task, completed=total)


def _print_summary(s: dict[str, Any], data_dir: Path) -> None:
    table = Table("what", "count", title="What the fleet did", title_justify="left")
    table.add_row("runs", str(s["runs"]["total"]))
    for status, n in s["runs"]["by_status"].items():
        table.add_row(f"  runs {status}", str(n))
    table.add_row("steps", str(s["steps"]["total"]))
    table.add_row("  attempts", str(s["steps"]["attempts"]))
    table.add_row("  retries", str(s["steps"]["retries"]))
    for effect, n in s["policy_decisions"]["by_effect"].items():
        table.add_row(f"policy {effect}", str(n))
    table.add_row("tool calls (failed)", f'{s["tool_calls"]["total"]} ({s["tool_calls"]["failed"]})')
    a = s["agents"]
    table.add_row("agent steps", str(a["steps"]["total"]))
    table.add_row("  agent turns", str(a["turns"]["total"]))
    table.add_row("  agent tool calls", str(a["tool_calls"]["total"]))
    for outcome, n in a["tool_calls"]["by_outcome"].items():
        table.add_row(f"    {outcome}", str(n))
    b = s["budget"]
    table.add_row("tokens used / reserved", f'{b["tokens_used"]} / {b["tokens_reserved"]}')
    table.add_row("cost used / reserved", f'${b["cost_used"]:.4f} / ${b["cost_reserved"]:.4f}')
    out.print(table)
    out.print(f"\nState is in [bold]{data_dir}[/]. Next: "
              f"[cyan]fleetforge runs list --data-dir {data_dir}[/]")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        runs: Annotated[int, typer.Option(envvar="FLEETFORGE_DEMO_RUNS", min=1, max=100_000,
                                          help="Runs in the sample fleet.")] = 40,
        seed: Annotated[int, typer.Option(envvar="FLEETFORGE_DEMO_SEED", min=0,
                                          help="Fleet seed: the same seed gives the same fleet.")] = 7,
        data_dir: DataDirOpt = None,
        no_serve: Annotated[bool, typer.Option("--no-serve", envvar="FLEETFORGE_DEMO_NO_SERVE",
                                               help="Exit when the fleet is done instead of serving "
                                                    "the dashboard.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: the ground truth "
                                                            "from the state tables.")] = False,
        workers: Annotated[int, typer.Option(envvar="FLEETFORGE_DEMO_WORKERS", min=1, max=64,
                                             help="In-process workers.")] = 2,
        concurrency: Annotated[int, typer.Option(envvar="FLEETFORGE_DEMO_CONCURRENCY", min=1, max=1024,
                                                 help="Steps each worker runs at once.")] = 16,
        window_min: Annotated[int, typer.Option(
            "--window-minutes", envvar="FLEETFORGE_DEMO_WINDOW_MINUTES", min=0, max=1_440,
            help="Date the runs' events over this many minutes before the demo starts (each run at a "
                 "place drawn from --seed; times within a run stay real), so the dashboard's charts "
                 "show a shape; 0 keeps the wall clock. See docs/dashboard.md.")] = 45,
        keep: Annotated[bool, typer.Option("--keep", envvar="FLEETFORGE_DEMO_KEEP",
                                           help="Keep earlier demo state in --data-dir instead of "
                                                "starting fresh.")] = False,
        host: HostOpt = "127.0.0.1",
        port: PortOpt = 8080,
        allowed_host: AllowedHostOpt = None,
    ) -> None:
        """Run a realistic sample fleet end to end on the embedded stores (SQLite + chDB)."""
        folder = data_dir or DEFAULT_DATA_DIR
        with guard():
            folder.mkdir(parents=True, exist_ok=True)
            if not keep:
                _reset(folder)
            state = SqliteStore(folder / "state.db")
            state.migrate()
            telemetry = start_telemetry(state, "demo", service_name="fleetforge-demo")
            try:
                with EmbeddedAnalytics(chdb_dir(folder)) as analytics:
                    try:
                        summary = asyncio.run(run_demo(folder, analytics, runs=runs, seed=seed, workers=workers,
                                                       concurrency=concurrency, progress=not as_json,
                                                       window_s=window_min * 60))
                    except AnalyticsError:
                        analytics.check_data_dir()  # a deleted data dir explains the failure best
                        raise
                    if telemetry.service is not None and not telemetry.service.caught_up(60.0):
                        err.print("[yellow]warning:[/] the telemetry reader has not caught up yet", highlight=False)
                    if as_json:
                        print_json(summary)
                    else:
                        _print_summary(summary, folder)
                    if not no_serve:
                        store = SqliteStore(folder / "state.db")
                        serve_until_interrupted(Dashboard(analytics.analytics, store), host, port,
                                                allowed_hosts(allowed_host))
            finally:
                telemetry.stop()
                state.close()
