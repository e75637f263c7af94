"""`fleetforge dashboard`: serve the built-in, read-only dashboard."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, err, guard
from fleetforge.adapters.process import stop_event
from fleetforge.adapters.readers.clickhouse.backends import open_analytics
from fleetforge.adapters.stores.factory import open_store
from fleetforge.adapters.views.dashboard.app import Dashboard, DashboardServer
from fleetforge.ports.store import Store

__all__ = ["AllowedHostOpt", "HostOpt", "PortOpt", "allowed_hosts", "register", "serve_until_interrupted"]

HostOpt = Annotated[str, typer.Option("--host", envvar="FLEETFORGE_DASHBOARD_HOST",
                                      help="Address to bind; loopback by default (use 0.0.0.0 to expose it).")]
PortOpt = Annotated[int, typer.Option("--port", envvar="FLEETFORGE_DASHBOARD_PORT", min=0, max=65535,
                                      help="Port of the dashboard (0 picks a free one).")]
AllowedHostOpt = Annotated[list[str] | None, typer.Option(
    "--allowed-host", envvar="FLEETFORGE_DASHBOARD_ALLOWED_HOSTS", show_default=False, metavar="NAME",
    help="Host name the dashboard may be reached by, besides IP addresses and localhost (other names get "
         "421, against DNS rebinding). Repeat it or give a comma-separated list; '*' allows any name "
         "(only behind your own proxy).")]


def allowed_hosts(values: list[str] | None) -> list[str]:
    """The --allowed-host values, comma lists split and blanks dropped."""
    return [name.strip() for value in values or () for name in value.split(",") if name.strip()]


def _read_only_store(url: str | None, data_dir: Path) -> Store | None:
    """The run store if it exists; never created or migrated here (the dashboard only reads)."""
    if url:
        return open_store(url)
    path = data_dir / "state.db"
    return open_store(f"sqlite:///{path}") if path.is_file() else None


def serve_until_interrupted(
    dashboard: Dashboard, host: str, port: int, allowed: Sequence[str] = ()
) -> None:
    """Serve `dashboard` until SIGINT or SIGTERM; ConfigError when it cannot listen."""
    server = DashboardServer(dashboard, host, port, allowed_hosts=allowed).start()
    err.print(f"Dashboard on [bold cyan]{server.url}[/] (read-only). Press Ctrl-C to stop.", highlight=False)
    with stop_event() as done:
        done.wait()
    server.stop()


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(
        data_dir: DataDirOpt = None,
        clickhouse_url: Annotated[str | None, typer.Option(
            "--clickhouse-url", envvar="FLEETFORGE_CLICKHOUSE_URL", show_default=False,
            help="ClickHouse server URL. Default: embedded chDB under --data-dir.")] = None,
        store: StoreOpt = None,
        host: HostOpt = "127.0.0.1",
        port: PortOpt = 8080,
        allowed_host: AllowedHostOpt = None,
    ) -> None:
        """Serve the built-in dashboard: SLO/MTTR, retries, budgets, policy decisions, tool flakes, runs."""
        with guard():
            analytics = open_analytics(data_dir=data_dir, clickhouse_url=clickhouse_url,
                                       explicit_data_dir=bool(data_dir and clickhouse_url))
            state = _read_only_store(store, data_dir or Path(".fleetforge"))
            try:
                serve_until_interrupted(Dashboard(analytics, state), host, port, allowed_hosts(allowed_host))
            finally:
                analytics.close()
                if state is not None:
                    state.close()
