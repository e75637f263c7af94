"""`fleetforge doctor`: check every configured part of a deployment and print OK / WARN / FAIL with a fix.

Checks: state store reachable and migrated; outbox backlog per known consumer; broker reachable and
delivery mode; ClickHouse reachable with raw tables, derived tables and views present and fresh;
OTLP endpoint reachable; Prometheus endpoint serving; exporter manifests and credentials. A part
that is not configured is SKIPped with how to configure it. Exit code 1 when any check FAILs.
The checks themselves are in adapters/checks.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fleetforge.adapters.checks import run_checks
from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, out, print_json
from fleetforge.core.diagnosis import BACKLOG_FAIL_S, BACKLOG_WARN_S, Verdict, exit_code, overall

__all__ = ["register"]

_STYLE = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "bold red", Verdict.SKIP: "dim"}


def register(app: typer.Typer) -> None:
    """Add `doctor` to the main app."""

    @app.command("doctor")
    def doctor(
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        clickhouse_url: Annotated[str | None, typer.Option(
            "--clickhouse-url", envvar="FLEETFORGE_CLICKHOUSE_URL", show_default=False,
            help="ClickHouse server URL (default: chDB under --data-dir).")] = None,
        config: Annotated[Path | None, typer.Option(
            "--config", envvar="FLEETFORGE_KAFKA_CONFIG", show_default=False,
            help="Forwarder TOML file with a [bus] table; FLEETFORGE_KAFKA_* env vars override it.")] = None,
        warn_s: Annotated[float, typer.Option("--backlog-warn-s", envvar="FLEETFORGE_DOCTOR_BACKLOG_WARN_S",
                                              min=0.0, help="WARN when the oldest undelivered event (or the "
                                              "analytics lag) is older than this.")] = BACKLOG_WARN_S,
        fail_s: Annotated[float, typer.Option("--backlog-fail-s", envvar="FLEETFORGE_DOCTOR_BACKLOG_FAIL_S",
                                              min=0.0, help="FAIL when it is older than this.")] = BACKLOG_FAIL_S,
        as_json: Annotated[bool, typer.Option("--json", envvar="FLEETFORGE_JSON_OUTPUT",
                                              help="Print one JSON object instead of a table.")] = False,
    ) -> None:
        """Check every configured part (store, outbox, broker, ClickHouse, telemetry, exporters); exit 1 on FAIL."""
        checks = run_checks(store_url=store, data_dir=data_dir, clickhouse_url=clickhouse_url, config=config,
                            warn_s=warn_s, fail_s=fail_s)
        if as_json:
            print_json({"verdict": str(overall(checks)), "checks": [c.to_dict() for c in checks]})
        else:
            table = Table("check", "verdict", "detail", "fix", title="fleetforge doctor")
            for c in checks:
                table.add_row(escape(c.name), f"[{_STYLE[c.verdict]}]{c.verdict}[/]", escape(c.detail),
                              escape(c.fix))
            out.print(table)
            out.print(f"overall: [{_STYLE[overall(checks)]}]{overall(checks)}[/]")
        raise typer.Exit(exit_code(checks))
