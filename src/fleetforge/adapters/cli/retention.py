"""`fleetforge retention`: prune the outbox and finished runs now, show what would go, forget a reader.

`fleetforge worker` runs the same passes by itself (`service_from_env`); see docs/retention.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, err, guard, out, print_json
from fleetforge.adapters.executors.langgraph.checkpoints import GraphCheckpoints
from fleetforge.adapters.process import process_id, stop_event
from fleetforge.core.retention import (
    COMPANION_SUFFIXES,
    DEFAULT_SETTINGS,
    Retention,
    RetentionReport,
    RetentionService,
    RetentionSettings,
)
from fleetforge.domain import envparse
from fleetforge.domain.envparse import format_duration
from fleetforge.domain.errors import ConfigError, NotFoundError
from fleetforge.ports.retention import RetentionStore
from fleetforge.ports.store import Store

__all__ = ["ENV", "register", "service_from_env", "settings_from_env"]

ENV = {
    "outbox": "FLEETFORGE_OUTBOX_RETENTION",
    "runs": "FLEETFORGE_RUN_RETENTION",
    "lag": "FLEETFORGE_READER_LAG_LIMIT",
    "interval": "FLEETFORGE_RETENTION_INTERVAL",
    "batch": "FLEETFORGE_RETENTION_BATCH",
}
_D = DEFAULT_SETTINGS


def _settings(outbox: str, runs: str, lag: str, interval: str, batch: int) -> RetentionSettings:
    interval_s = envparse.duration(interval, ENV["interval"], allow_off=False)
    lag_s = envparse.duration(lag, ENV["lag"], allow_off=False)
    assert interval_s is not None and lag_s is not None
    if batch < 1:
        raise ConfigError(f"{ENV['batch']}: got {batch}, expected a whole number >= 1")
    return RetentionSettings(outbox_window_s=envparse.duration(outbox, ENV["outbox"]),
                             run_window_s=envparse.duration(runs, ENV["runs"]), reader_lag_limit_s=lag_s,
                             interval_s=interval_s, batch=batch)


def settings_from_env(env: Mapping[str, str] | None = None) -> RetentionSettings:
    """RetentionSettings from the FLEETFORGE_* variables in ENV (defaults where unset)."""
    e = os.environ if env is None else env
    raw_batch = envparse.value(e, ENV["batch"])
    batch = _D.batch if raw_batch is None else envparse.integer(raw_batch, ENV["batch"], lo=1)
    return _settings(envparse.value(e, ENV["outbox"]) or format_duration(_D.outbox_window_s),
                     envparse.value(e, ENV["runs"]) or format_duration(_D.run_window_s),
                     envparse.value(e, ENV["lag"]) or format_duration(_D.reader_lag_limit_s),
                     envparse.value(e, ENV["interval"]) or format_duration(_D.interval_s), batch)


def service_from_env(store: Store, holder: str) -> RetentionService:
    """The background pruning `fleetforge worker` runs (not started). Raises ConfigError for bad env vars."""
    rs = _as_retention(store)
    checkpoints = GraphCheckpoints.for_store(rs)
    return RetentionService(Retention(rs, settings_from_env(), holder=holder, checkpoints=checkpoints))


def _as_retention(store: Store) -> RetentionStore:
    """Both stores implement RetentionStore beside Store."""
    return store  # type: ignore[return-value]


def _ts(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") if us else ""


def _print(report: RetentionReport, settings: RetentionSettings) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    table = Table("reader", "position", "cursor updated", "lag", "status",
                  title=f"outbox readers (lag limit {format_duration(settings.reader_lag_limit_s)})")
    for r in report.readers:
        status = "[yellow]LAGGING: holds back pruning[/]" if r.lagging else "ok"
        table.add_row(escape(r.name), f"{r.position[0]}:{r.position[1]}", _ts(r.updated_us), f"{r.lag_s:.0f}s",
                      status)
    if report.readers:
        out.print(table)
    else:
        out.print("no outbox reader registered: outbox rows are pruned by age alone")
    if not report.held_lease and not report.dry_run:
        out.print("another process holds the retention lease (a worker prunes): nothing done here")
        return
    out.print(f"outbox: {verb} {report.outbox_pruned} rows (window {format_duration(settings.outbox_window_s)})",
              highlight=False)
    out.print(f"runs: {verb} {report.runs_pruned} finished runs with their steps, attempts and decisions "
              f"(window {format_duration(settings.run_window_s)})", highlight=False)
    if report.checkpoint_threads_pruned:
        out.print(f"graph checkpoints: deleted {report.checkpoint_threads_pruned} LangGraph threads of those runs",
                  highlight=False)
    for r in report.lagging:
        err.print(f"warning: reader {r.name!r} is {r.lag_s:.0f}s behind: start it, or run "
                  f"`fleetforge retention --forget-reader {r.name}` if it is gone for good", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `retention` to the main app."""

    @app.command("retention")
    def retention(
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", envvar="FLEETFORGE_RETENTION_DRY_RUN",
                                              help="Count what would be deleted; delete nothing.")] = False,
        as_json: Annotated[bool, typer.Option("--json", envvar="FLEETFORGE_JSON_OUTPUT",
                                              help="Print one JSON object instead of tables.")] = False,
        outbox: Annotated[str, typer.Option(
            "--outbox-retention", envvar=ENV["outbox"],
            help="Keep outbox rows at least this long after they were written, and until every reader "
                 "passed them (90s, 15m, 1h, 7d; 0/off: keep forever).")] = format_duration(_D.outbox_window_s),
        runs: Annotated[str, typer.Option(
            "--run-retention", envvar=ENV["runs"],
            help="Delete finished runs (with steps, attempts, decisions, run budget) this long after they "
                 "finished (0/off: keep forever).")] = format_duration(_D.run_window_s),
        lag: Annotated[str, typer.Option(
            "--reader-lag-limit", envvar=ENV["lag"],
            help="Report a reader whose oldest unread event is older than this (it still holds back "
                 "pruning of what it has not read).")] = format_duration(_D.reader_lag_limit_s),
        batch: Annotated[int, typer.Option("--batch", envvar=ENV["batch"], min=1, max=100_000,
                                           help="Rows or runs deleted per short transaction.")] = _D.batch,
        interval: Annotated[str, typer.Option(
            "--interval", envvar=ENV["interval"],
            help="Time between passes with --watch (and in `fleetforge worker`).")] = format_duration(_D.interval_s),
        watch: Annotated[bool, typer.Option("--watch", envvar="FLEETFORGE_RETENTION_WATCH",
                                            help="Keep pruning every --interval until interrupted.")] = False,
        metrics: Annotated[bool, typer.Option(
            "--metrics/--no-metrics", envvar="FLEETFORGE_RETENTION_METRICS",
            help="With --watch: serve the retention metrics on OTEL_EXPORTER_PROMETHEUS_HOST/PORT "
                 "(default 127.0.0.1:9464).")] = True,
        forget_reader: Annotated[str | None, typer.Option(
            "--forget-reader", envvar="FLEETFORGE_RETENTION_FORGET_READER", show_default=False,
            help="Remove reader NAME's outbox cursor so it no longer holds back pruning (if it runs again "
                 "it starts from the oldest row left), then exit.")] = None,
        holder: Annotated[str | None, typer.Option(
            "--id", envvar="FLEETFORGE_RETENTION_ID", show_default=False,
            help="Holder name for the retention lease (default: host-pid).")] = None,
    ) -> None:
        """Prune outbox rows every reader has passed and finished runs past their age (docs/retention.md)."""
        from fleetforge.adapters.cli.wiring import store_for

        with guard():
            settings = _settings(outbox, runs, lag, interval, batch)
            st = store_for(store, data_dir)
            rs = _as_retention(st)
            try:
                if forget_reader is not None:
                    _forget(rs, forget_reader, as_json)
                    return
                worker = Retention(rs, settings, holder=process_id(holder),
                                   checkpoints=GraphCheckpoints.for_store(rs))
                if watch:
                    _watch(worker, metrics)
                    return
                report = worker.run_once(dry_run=dry_run)
                while not dry_run and report.held_lease and not report.complete:
                    more = worker.run_once()
                    more.outbox_pruned += report.outbox_pruned
                    more.runs_pruned += report.runs_pruned
                    more.checkpoint_threads_pruned += report.checkpoint_threads_pruned
                    report = more
                if not dry_run and report.held_lease:
                    worker.release()
            finally:
                st.close()
        if as_json:
            print_json({**report.to_dict(), "settings": {
                "outbox_retention": format_duration(settings.outbox_window_s),
                "run_retention": format_duration(settings.run_window_s),
                "reader_lag_limit": format_duration(settings.reader_lag_limit_s)}})
        else:
            _print(report, settings)


def _forget(store: RetentionStore, name: str, as_json: bool) -> None:
    names = [name] if name.endswith(COMPANION_SUFFIXES) else [name, *(name + s for s in COMPANION_SUFFIXES)]
    forgotten = [n for n in names if store.forget_cursor(n)]
    if not forgotten:
        known = ", ".join(c.name for c in store.list_cursors()) or "none"
        raise NotFoundError(f"no outbox reader {name!r} (registered: {known})")
    if as_json:
        print_json({"forgotten": forgotten})
    else:
        out.print(f"forgot outbox reader(s): {', '.join(forgotten)}", highlight=False)


def _watch(worker: Retention, metrics: bool) -> None:
    from fleetforge.adapters.readers.telemetry.instruments import METER_NAME
    from fleetforge.adapters.readers.telemetry.providers import Telemetry
    from fleetforge.adapters.readers.telemetry.retention_metrics import RetentionMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    telemetry = Telemetry.from_env(service_name="fleetforge-retention")
    observer = None
    if telemetry.meter_provider is not None:
        observer = RetentionMetrics(telemetry.meter_provider.get_meter(METER_NAME)).record
    if metrics:
        try:
            telemetry.start_prometheus()
        except ConfigError as exc:
            err.print(f"warning: metrics not served: {exc}", highlight=False)
    with stop_event() as stop:
        service = RetentionService(worker, observer=observer).start()
        try:
            stop.wait()
        finally:
            service.stop()
            telemetry.shutdown()
    out.print(f"retention: {service.passes} passes", highlight=False)
