"""`fleetforge exporters status|run`: which trace exporters are active (and why not), and deliver."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, err, guard, out, print_json
from fleetforge.adapters.cli.wiring import DEFAULT_DATA_DIR, store_for
from fleetforge.adapters.process import stop_event
from fleetforge.adapters.readers.traces.discovery import ENV_EXPORTERS, ENV_PLUGINS_DIR, Discovery, discover
from fleetforge.adapters.readers.traces.exporter_set import start_exporters
from fleetforge.domain.envelope import format_ts
from fleetforge.ports.store import Store

__all__ = ["register"]

ExportersOpt = Annotated[
    str | None,
    typer.Option("--exporters", envvar=ENV_EXPORTERS, show_default=False,
                 help="Comma-separated exporters to run: langsmith, langfuse, phoenix."),
]
PluginsOpt = Annotated[
    Path | None,
    typer.Option("--plugins-dir", envvar=ENV_PLUGINS_DIR, show_default=False,
                 help="Folder holding exporters/<name>.toml manifests. Default: ./plugins"),
]


def _env(exporters: str | None, plugins_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if exporters is not None:
        env[ENV_EXPORTERS] = exporters
    if plugins_dir is not None:
        env[ENV_PLUGINS_DIR] = str(plugins_dir)
    return env


def _open_store(store: str | None, data_dir: Path | None) -> Store | None:
    """The store named by the options, or the default embedded one when it exists; else None."""
    if store is None and not ((data_dir or DEFAULT_DATA_DIR) / "state.db").is_file():
        return None
    return store_for(store, data_dir)


def _rows(found: Discovery, st: Store | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in found.active:
        row: dict[str, Any] = {"name": c.name, "active": True, "endpoint": c.base_url,
                               "manifest": str(c.manifest), "options": dict(c.options), "reason": ""}
        if st is not None:
            behind, oldest = st.outbox_backlog(c.consumer)
            row["backlog_events"] = behind
            row["oldest_undelivered"] = format_ts(oldest) if oldest is not None else None
        rows.append(row)
    for s in found.skipped:
        rows.append({"name": s.name, "active": False, "endpoint": "", "manifest": "", "options": {},
                     "reason": s.reason})
    return rows


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("fleetforge.exporters").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Trace exporters to LangSmith, Langfuse and Phoenix.", no_args_is_help=True)
    app.add_typer(group, name="exporters")

    @group.command("status")
    def status(
        exporters: ExportersOpt = None,
        plugins_dir: PluginsOpt = None,
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Which exporters are active and, for the others, why not; the outbox backlog of each."""
        with guard():
            found = discover(_env(exporters, plugins_dir))
            st = _open_store(store, data_dir)
            rows = _rows(found, st)
        if as_json:
            print_json({"summary": found.summary, "plugins_dir": str(found.plugins_dir), "exporters": rows})
            return
        out.print(found.summary, highlight=False)
        if not rows:
            return
        table = Table("exporter", "state", "endpoint / reason", "backlog")
        for r in rows:
            backlog = "" if "backlog_events" not in r else (
                f"{r['backlog_events']} events" + (f" (since {r['oldest_undelivered']})"
                                                   if r["oldest_undelivered"] else ""))
            table.add_row(r["name"], "active" if r["active"] else "off",
                          r["endpoint"] if r["active"] else r["reason"], backlog)
        out.print(table)

    @group.command("run")
    def run(
        exporters: ExportersOpt = None,
        plugins_dir: PluginsOpt = None,
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        until_idle: Annotated[bool, typer.Option("--until-idle", envvar="FLEETFORGE_EXPORTERS_UNTIL_IDLE",
                                                 help="Exit once the outbox is read to its end and "
                                                      "every finished span is delivered.")] = False,
        drain_timeout: Annotated[float, typer.Option(envvar="FLEETFORGE_EXPORTERS_DRAIN_TIMEOUT", min=0.0,
                                                     help="Seconds allowed to deliver what is queued when "
                                                          "stopping.")] = 30.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print the final counters as JSON.")] = False,
    ) -> None:
        """Deliver outbox events to the active exporters until interrupted (or idle, with --until-idle)."""
        _logging()
        with guard():
            env = _env(exporters, plugins_dir)
            found = discover(env)
            if not found.active:
                why = "; ".join(s.reason for s in found.skipped) or found.summary
                die(f"no trace exporter is active: {why}", 2)
            st = store_for(store, data_dir)
            try:
                with stop_event() as stop:
                    running = start_exporters(st, env)
                    for e in running.exporters:
                        err.print(f"exporter {e.name} → {e.config.base_url} (cursor {e.config.consumer})",
                                  highlight=False)
                    ok = True
                    while not stop.is_set():
                        parked = [e.info.state == "auth_failed" for e in running.exporters]
                        if all(parked):
                            ok = False
                            break
                        if until_idle and all(p or e.wait_idle(0.3) for p, e in zip(parked, running.exporters,
                                                                                    strict=True)):
                            break
                        stop.wait(0.0 if until_idle else 0.5)
                    ok = running.stop(drain_timeout) and ok
            finally:
                st.close()
        report = running.status()
        if as_json:
            print_json({"ok": ok, "exporters": report})
        else:
            for r in report:
                out.print(f"{r['name']}: {r['spans_delivered']} spans delivered, {r['spans_rejected']} rejected, "
                          f"{r['retries']} retries; state {r['state']}"
                          + (f" (last error: {r['last_error']})" if r["last_error"] else ""), highlight=False)
        if not ok:
            paused = [r["name"] for r in report if r["state"] == "auth_failed"]
            if paused:
                die(f"delivery paused: {', '.join(paused)} refused the credentials; fix them and run again "
                    "(undelivered events stay in the outbox)", 1)
            die(f"not everything was delivered within --drain-timeout {drain_timeout:g}s; the rest stays in "
                "the outbox for the next run", 1)

