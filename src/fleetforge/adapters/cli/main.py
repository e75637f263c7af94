"""`fleetforge` command line: submit, worker, runs, migrate, demo and the commands of each area."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from fleetforge import __version__
from fleetforge.adapters.cli import control, demo, forkreplay, runs
from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, guard, out, print_json
from fleetforge.adapters.cli.wiring import build_runtime, store_for, tools_registry
from fleetforge.adapters.process import loop_stop_event, process_id
from fleetforge.core.fork import reused_source
from fleetforge.core.worker import Worker
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.domain.models import RunStatus
from fleetforge.domain.spec import MAX_SPEC_BYTES, decode_spec_bytes, load_spec_text

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleetforge",
    help="Run fleets of AI-agent workflows durably, and see everything they do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="List, inspect, cancel, approve, pause, resume, fork and replay runs.",
                       no_args_is_help=True)
app.add_typer(runs_app, name="runs")

# Command modules of the other areas; each exposes register(app).
_AREAS = ("analytics", "forwarder", "exporters", "observability", "dashboard", "doctor", "retention", "telemetry",
          "serve", "tokens")


def _version(value: bool) -> None:
    if value:
        out.print(f"fleetforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """FleetForge command line."""


_ts = runs.ts


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Run spec file (JSON or YAML); '-' reads standard input.",
                                         show_default=False)],
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"run_id\": ...} as JSON.")] = False,
) -> None:
    """Validate a run spec and store it; workers pick it up. Prints the run id."""
    with guard():
        if str(spec) == "-":
            source = "<stdin>"
            text = decode_spec_bytes(sys.stdin.buffer.read(MAX_SPEC_BYTES + 1), source=source)
        else:
            if not spec.is_file():
                what = "is not a file" if spec.exists() else "does not exist"
                die(f"spec file {str(spec)!r} {what}; pass a JSON or YAML run spec", 2)
            try:
                with spec.open("rb") as f:
                    raw, source = f.read(MAX_SPEC_BYTES + 1), str(spec)
            except OSError as exc:
                die(f"cannot read spec file {str(spec)!r}: {exc.strerror or exc}", 2)
            text = decode_spec_bytes(raw, source=source)
        data = load_spec_text(text, source=source)
        st = store_for(store, data_dir)

        async def go() -> str:
            async with httpx.AsyncClient() as client:
                return build_runtime(st, client).submit(data)

        try:
            run_id = asyncio.run(go())
        except SpecError as exc:
            raise SpecError([f"{source}: {p}" for p in exc.problems]) from None
    if as_json:
        print_json({"run_id": run_id})
    else:
        out.print(run_id)


@app.command()
def worker(
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    worker_id: Annotated[str | None, typer.Option("--id", envvar="FLEETFORGE_WORKER_ID", show_default=False,
                                                  help="Stable worker id (default: host-pid).")] = None,
    concurrency: Annotated[int, typer.Option(envvar="FLEETFORGE_WORKER_CONCURRENCY", min=1, max=4096,
                                             help="Steps executed at once.")] = 16,
    until_idle: Annotated[bool, typer.Option("--until-idle", envvar="FLEETFORGE_WORKER_UNTIL_IDLE",
                                             help="Exit once no run is open.")] = False,
    poll_ms: Annotated[int, typer.Option(envvar="FLEETFORGE_WORKER_POLL_MS", min=1,
                                         help="Poll interval in milliseconds: the longest a worker goes without "
                                              "looking for new steps (an idle one is also woken when steps are "
                                              "queued).")] = 50,
    tools: Annotated[list[str] | None, typer.Option(
        "--tools", envvar="FLEETFORGE_TOOLS", show_default=False,
        help="Register your own tools: 'module:function', called with the ToolRegistry. "
             "Repeatable; the env var takes comma-separated values.")] = None,
    retention: Annotated[bool, typer.Option(
        "--retention/--no-retention", envvar="FLEETFORGE_RETENTION",
        help="Prune the outbox and finished runs in the background (one worker of the fleet at a time; "
             "settings from FLEETFORGE_OUTBOX_RETENTION, FLEETFORGE_RUN_RETENTION, ... see "
             "docs/retention.md).")] = True,
    telemetry: Annotated[bool, typer.Option(
        "--telemetry/--no-telemetry", envvar="FLEETFORGE_TELEMETRY",
        help="Run the telemetry reader: the worker holding its lease publishes the fleet's metrics and spans "
             "(Prometheus on OTEL_EXPORTER_PROMETHEUS_PORT, default 9464; OTLP with "
             "OTEL_EXPORTER_OTLP_ENDPOINT); every worker publishes its own process metrics. "
             "See docs/telemetry.md.")] = True,
) -> None:
    """Claim and execute ready steps until interrupted (SIGINT/SIGTERM finish what is in flight)."""
    from fleetforge.adapters.cli.retention import service_from_env
    from fleetforge.adapters.cli.telemetry import start_telemetry
    from fleetforge.adapters.readers.traces import start_exporters

    with guard():
        registry = tools_registry(tools or ())
        st = store_for(store, data_dir)
        wid = process_id(worker_id)
        pruning = service_from_env(st, wid) if retention else None
        running: list[Worker] = []
        metrics = start_telemetry(st, wid, reader=telemetry, service_name="fleetforge-worker",
                                  inflight=lambda: running[0].inflight if running else 0)
        exporters = start_exporters(st)  # FLEETFORGE_TRACE_EXPORTERS and manifests; nothing when unset

        async def go() -> None:
            with loop_stop_event() as stop:
                async with httpx.AsyncClient() as client:
                    w = build_runtime(st, client, tools=registry).worker(
                        wid, concurrency=concurrency, poll_interval_s=poll_ms / 1000)
                    running.append(w)
                    await w.run(stop=stop, until_idle=until_idle)

        if pruning is not None:
            pruning.start()
        try:
            asyncio.run(go())
        finally:
            if pruning is not None:
                pruning.stop()
            exporters.stop(10.0)
            metrics.stop()


@app.command()
def migrate(store: StoreOpt = None, data_dir: DataDirOpt = None) -> None:
    """Create or upgrade the state store schema (every command also does this on start)."""
    with guard():
        st = store_for(store, data_dir)
        out.print(f"{st.backend} store at schema version {st.schema_version()}")


@runs_app.command("list")
def runs_list(
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.", show_default=False)] = None,
    workspace: Annotated[str | None, typer.Option(help="Only runs of this workspace.",
                                                  show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many runs.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """The most recent runs, newest first. Every id prints whole on one line at any terminal width."""
    allowed = {str(s) for s in RunStatus}
    if status is not None and status not in allowed:
        die(f"--status: got {status!r}, expected one of {', '.join(sorted(allowed))}", 2)
    with guard():
        rows = store_for(store, data_dir).list_runs(status=status, workspace=workspace, limit=limit)
    if as_json:
        print_json([{"run_id": r.id, "workspace": r.workspace, "app": r.app, "status": str(r.status),
                     "created_at": _ts(r.created_us), "finished_at": _ts(r.finished_us),
                     "error_kind": r.error_kind} for r in rows])
        return
    runs.print_runs(rows)


@runs_app.command("get")
def runs_get(
    run_id: Annotated[str, typer.Argument(help="The run id, or a unique prefix of it (like git).",
                                          show_default=False)],
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One run with its steps, attempts (the cost ledger) and policy decisions.

    Exit code 2 when a prefix matches several runs (they are listed), 3 when none does."""
    st = runs.store_for_cli(store, data_dir)
    run_id = runs.run_id_of(st, run_id)
    with guard():
        run = st.get_run(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}; list runs with `fleetforge runs list`")
        steps, attempts, decisions = st.get_steps(run_id), st.get_attempts(run_id), st.get_decisions(run_id)
        origin = st.get_origin(run_id)
    doc = {
        "run_id": run.id, "workspace": run.workspace, "app": run.app, "status": str(run.status),
        "trace_id": run.trace_id, "slo_tier": run.slo_tier, "error_kind": run.error_kind,
        "created_at": _ts(run.created_us), "finished_at": _ts(run.finished_us),
        "outputs": run.outputs or {},
        "forked_from": None if origin is None else {"run_id": origin.source_run, "step": origin.source_step,
                                                    "actor": origin.actor},
        "steps": [{"step_id": s.step_id, "type": str(s.type), "status": str(s.status), "attempts": s.attempt,
                   "error_kind": s.error_kind, "reused": reused_source(s) is not None} for s in steps],
        "attempts": [{"step_id": a.step_id, "attempt": a.attempt, "status": a.status, "error_kind": a.error_kind,
                      "tokens_reserved": a.tokens_reserved, "tokens_used": a.tokens_used,
                      "cost_reserved": a.cost_reserved_micros / 1e6, "cost_used": a.cost_used_micros / 1e6,
                      "tool": a.tool, "provider": a.provider, "model": a.model} for a in attempts],
        "policy_decisions": [{"step_id": d.step_id, "attempt": d.attempt, "pack": d.pack, "hook": d.hook,
                              "effect": d.effect, "reason": d.reason, "wait_ms": d.wait_us / 1000}
                             for d in decisions],
    }
    if as_json:
        print_json(doc)
        return
    out.print(f"[bold]{run.id}[/]  {run.workspace}/{run.app}  [bold]{run.status}[/]  trace {run.trace_id}")
    if run.outputs:
        out.print("outputs " + json.dumps(run.outputs, ensure_ascii=False), markup=False, highlight=False)
    if origin is not None:
        out.print(f"forked from {origin.source_run} at {origin.source_step} by {origin.actor or '-'}", markup=False,
                  highlight=False)
    for title, key in (("steps", "steps"), ("attempts", "attempts"), ("policy decisions", "policy_decisions")):
        rows = doc[key]
        assert isinstance(rows, list)
        if not rows:
            continue
        table = Table(*rows[0].keys(), title=title)
        for row in rows:
            table.add_row(*(json.dumps(v) if not isinstance(v, str) else v for v in row.values()))
        out.print(table)


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run id, or a unique prefix of it (like git).",
                                          show_default=False)],
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Cancel a run: queued and pending steps stop; running attempts finish.

    Exit code 2 when a prefix matches several runs (they are listed), 3 when none does."""
    st = runs.store_for_cli(store, data_dir)
    run_id = runs.run_id_of(st, run_id)
    with guard():

        async def go() -> bool:
            async with httpx.AsyncClient() as client:
                return build_runtime(st, client).cancel(run_id)

        changed = asyncio.run(go())
    out.print("canceled" if changed else "already finished")


demo.register(app)
runs.register(runs_app)
control.register(runs_app)
forkreplay.register(runs_app)
for _area in _AREAS:
    try:
        _module = importlib.import_module(f"fleetforge.adapters.cli.{_area}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"fleetforge.adapters.cli.{_area}":
            raise
    else:
        _module.register(app)


def main() -> None:
    """Console entry point."""
    app()
