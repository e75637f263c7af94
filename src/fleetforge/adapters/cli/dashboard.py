"""`fleetforge dashboard`: serve the built-in dashboard (read-only unless given a control token)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, err, guard
from fleetforge.adapters.process import stop_event
from fleetforge.adapters.readers.clickhouse.backends import open_analytics
from fleetforge.adapters.stores.factory import open_store
from fleetforge.adapters.views.dashboard.app import Dashboard, DashboardServer
from fleetforge.adapters.views.dashboard.control import DashboardControl
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.tokens import Forbidden, Unauthorized
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


CONTROL_TOKEN_ENV = "FLEETFORGE_DASHBOARD_CONTROL_TOKEN"


def control_token(path: Path | None) -> str | None:
    """The control token from the file `path`, else from FLEETFORGE_DASHBOARD_CONTROL_TOKEN; None for none."""
    from_env = os.environ.get(CONTROL_TOKEN_ENV, "").strip()
    if path is None:
        return from_env or None
    if from_env:
        raise ConfigError(f"--control-token-file and {CONTROL_TOKEN_ENV}: give the control token one way only")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--control-token-file: cannot read {path} ({type(exc).__name__}); give a file "
                          "holding a token from `fleetforge tokens create --scope control`") from None
    if not token:
        raise ConfigError(f"--control-token-file: {path} is empty; write a control token into it")
    return token


def _control(state: Store | None, token: str | None) -> DashboardControl | None:
    if token is None:
        return None
    if state is None:
        raise ConfigError("control token: the dashboard has no run store to act on; pass --store or a "
                          "--data-dir that holds one")
    try:
        return DashboardControl(state, token)
    except (Unauthorized, Forbidden) as exc:
        raise ConfigError(f"control token: refused: {exc}") from None


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
    mode = "read-only" if dashboard.control is None else f"control buttons act as dashboard:{dashboard.control.name}"
    err.print(f"Dashboard on [bold cyan]{server.url}[/] ({mode}). Press Ctrl-C to stop.", highlight=False)
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
        control_token_file: Annotated[Path | None, typer.Option(
            "--control-token-file", envvar="FLEETFORGE_DASHBOARD_CONTROL_TOKEN_FILE", show_default=False,
            metavar="FILE",
            help="A file holding a `control` token (`fleetforge tokens create --scope control`): the run "
                 "drill-down then shows approve/deny/pause/resume buttons, acting as dashboard:<token name>. "
                 f"Or put the token itself in {CONTROL_TOKEN_ENV}. Without one the dashboard is read-only.")]
            = None,
    ) -> None:
        """Serve the built-in dashboard: SLO/MTTR, retries, budgets, policy decisions, tool flakes, runs."""
        with guard():
            token = control_token(control_token_file)
            analytics = open_analytics(data_dir=data_dir, clickhouse_url=clickhouse_url,
                                       explicit_data_dir=bool(data_dir and clickhouse_url))
            state = _read_only_store(store, data_dir or Path(".fleetforge"))
            try:
                dash = Dashboard(analytics, state, _control(state, token))
                serve_until_interrupted(dash, host, port, allowed_hosts(allowed_host))
            finally:
                analytics.close()
                if state is not None:
                    state.close()
