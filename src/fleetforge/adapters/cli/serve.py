"""`fleetforge serve`: the HTTP API (docs/api.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetforge.adapters.api.app import ApiServer, api_context, is_loopback
from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, err, guard
from fleetforge.adapters.cli.dashboard import allowed_hosts
from fleetforge.adapters.cli.wiring import store_for
from fleetforge.adapters.process import stop_event

__all__ = ["register"]


def _exposed_warning(host: str, behind_tls: bool) -> None:
    if behind_tls:
        err.print(f"The API listens on {host}, not loopback; TLS is said to terminate in front of it.",
                  highlight=False, markup=False)
        return
    err.print(
        "[bold red]WARNING[/] The API is bound to [bold]" + host + "[/], reachable from other machines, over "
        "plain HTTP: bearer tokens and run data cross the network in clear. Put a TLS-terminating proxy in "
        "front (nginx, Caddy, a cloud load balancer) and pass --behind-tls-proxy, or bind 127.0.0.1.",
        highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        host: Annotated[str, typer.Option("--host", envvar="FLEETFORGE_API_HOST",
                                          help="Address to bind; loopback by default. Any other address gets a "
                                               "warning unless --behind-tls-proxy.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", envvar="FLEETFORGE_API_PORT", min=0, max=65535,
                                          help="Port of the API (0 picks a free one).")] = 8787,
        allowed_host: Annotated[list[str] | None, typer.Option(
            "--allowed-host", envvar="FLEETFORGE_API_ALLOWED_HOSTS", show_default=False, metavar="NAME",
            help="Host name the API may be reached by, besides IP addresses and localhost (other names get "
                 "421, against DNS rebinding). Repeat it or give a comma-separated list.")] = None,
        behind_tls_proxy: Annotated[bool, typer.Option(
            "--behind-tls-proxy", envvar="FLEETFORGE_API_BEHIND_TLS_PROXY",
            help="Say that a TLS-terminating proxy is in front, which silences the warning for a "
                 "non-loopback --host.")] = False,
        poll_ms: Annotated[int, typer.Option(
            "--poll-ms", envvar="FLEETFORGE_API_POLL_MS", min=1, max=60_000,
            help="How often an event stream reads the outbox when nothing is new, in milliseconds.")] = 200,
    ) -> None:
        """Serve the HTTP API: submit, list, get, cancel runs and stream their events (SSE), with bearer tokens
        from `fleetforge tokens create`. The OpenAPI document is at /openapi.json."""
        with guard(), stop_event() as done:
            st = store_for(store, data_dir)
            server = ApiServer(api_context(st, poll_s=poll_ms / 1000), host=host, port=port,
                               allowed_hosts=allowed_hosts(allowed_host)).start()
            try:
                if not is_loopback(host):
                    _exposed_warning(host, behind_tls_proxy)
                err.print(f"API on [bold cyan]{server.url}[/] (OpenAPI at {server.url}openapi.json). "
                          "Press Ctrl-C to stop.", highlight=False)
                done.wait()
            finally:
                server.stop()
                st.close()
