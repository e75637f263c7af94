"""`fleetforge observability up|down|status`: the local observability stack.

With a Docker engine (`docker info` answers) it drives the compose stack; without one it runs the embedded
stack (adapters/observability) in this process, or in a background process with `--detach`.
"""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, err, guard, out, print_json
from fleetforge.adapters.cli.wiring import DEFAULT_DATA_DIR
from fleetforge.adapters.devstack.compose import compose, compose_file, docker_available
from fleetforge.adapters.devstack.control import ping, running_state, start_detached, stop_running
from fleetforge.adapters.devstack.stack import EmbeddedStack, StackConfig
from fleetforge.adapters.process import stop_event
from fleetforge.domain.secrets import redact_url

__all__ = ["register"]

class Mode(StrEnum):
    AUTO = "auto"
    EMBEDDED = "embedded"
    COMPOSE = "compose"


ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        envvar="FLEETFORGE_OBSERVABILITY_MODE",
        case_sensitive=False,
        help="compose (Docker), embedded (one process, no Docker) or auto: "
        "compose when `docker info` answers, else embedded.",
    ),
]
StackDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--stack-dir",
        envvar="FLEETFORGE_OBSERVABILITY_DIR",
        show_default=False,
        help="Embedded stack folder: its chDB data dir (clickhouse/), state file and log. "
        "Default: <data-dir>/observability.",
    ),
]
ComposeFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--compose-file",
        envvar="FLEETFORGE_COMPOSE_FILE",
        show_default=False,
        help="Compose file of the compose stack. Default: deploy/compose/docker-compose.yaml.",
    ),
]


def _resolve(mode: Mode) -> Mode:
    if mode is Mode.AUTO:
        return Mode.COMPOSE if docker_available() else Mode.EMBEDDED
    if mode is Mode.COMPOSE and not docker_available():
        die("--mode compose: no Docker engine answers `docker info`; start Docker, or use --mode embedded", 2)
    return mode


def _stack_dir(stack_dir: Path | None, data_dir: Path | None) -> Path:
    return stack_dir or (data_dir or DEFAULT_DATA_DIR) / "observability"


def _print_addresses(addresses: dict[str, str]) -> None:
    ch = addresses.get("clickhouse_http", "")
    grpc = addresses.get("otlp_grpc", "").replace("http://", "").rstrip("/")
    err.print(
        f"ClickHouse HTTP  [bold cyan]{ch}[/]  (read-only: curl '{ch}?query=SHOW+TABLES+FROM+telemetry')\n"
        f"OTLP gRPC        [bold cyan]{grpc}[/]  (export OTEL_EXPORTER_OTLP_ENDPOINT=http://{grpc})\n"
        f"OTLP HTTP        [bold cyan]{addresses.get('otlp_http', '')}[/]v1/traces, /v1/metrics, /v1/logs\n"
        f"Prometheus       [bold cyan]{addresses.get('prometheus', '')}[/]",
        highlight=False,
    )


def _up_embedded(config: StackConfig) -> None:
    stack = EmbeddedStack(config)
    with guard():
        stack.start()
    with stop_event() as stop:
        err.print(
            f"Embedded observability stack up (pid {os.getpid()}, data in {config.stack_dir}).", highlight=False
        )
        _print_addresses(stack.addresses)
        if config.store_url:
            err.print(f"Streaming the outbox of {redact_url(config.store_url)} into ClickHouse.", highlight=False)
        err.print("Press Ctrl-C to stop (or run `fleetforge observability down`).", highlight=False)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            stack.stop()
            err.print(f"Stopped. {json.dumps(stack.stats())}", highlight=False)


def _detach(argv: list[str], folder: Path, wait_s: float) -> None:
    with guard():
        started = start_detached(argv, folder, wait_s)
    err.print(
        f"Embedded observability stack up in the background (pid {started.pid}, log {started.log_path}).",
        highlight=False,
    )
    _print_addresses(started.state["addresses"])
    err.print("Stop it with `fleetforge observability down`.", highlight=False)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The local observability stack: ClickHouse, an OTLP collector, Prometheus "
        "(compose with Docker, embedded without).",
        no_args_is_help=True,
    )
    app.add_typer(group, name="observability")

    @group.command("up")
    def up(
        mode: ModeOpt = Mode.AUTO,
        data_dir: DataDirOpt = None,
        store: StoreOpt = None,
        stack_dir: StackDirOpt = None,
        host: Annotated[
            str,
            typer.Option(
                "--host",
                envvar="FLEETFORGE_OBSERVABILITY_HOST",
                help="Address the embedded stack binds; loopback by default.",
            ),
        ] = "127.0.0.1",
        http_port: Annotated[
            int,
            typer.Option(
                "--http-port",
                envvar="FLEETFORGE_CLICKHOUSE_HTTP_PORT",
                min=0,
                max=65535,
                help="ClickHouse HTTP port (0 picks a free one).",
            ),
        ] = 8123,
        grpc_port: Annotated[
            int,
            typer.Option(
                "--otlp-grpc-port",
                envvar="FLEETFORGE_OTLP_GRPC_PORT",
                min=0,
                max=65535,
                help="OTLP/gRPC port (0 picks a free one).",
            ),
        ] = 4317,
        otlp_http_port: Annotated[
            int,
            typer.Option(
                "--otlp-http-port",
                envvar="FLEETFORGE_OTLP_HTTP_PORT",
                min=0,
                max=65535,
                help="OTLP/HTTP port (0 picks a free one).",
            ),
        ] = 4318,
        prometheus_port: Annotated[
            int,
            typer.Option(
                "--prometheus-port",
                envvar="FLEETFORGE_OBSERVABILITY_PROMETHEUS_PORT",
                min=0,
                max=65535,
                help="Port of the Prometheus endpoint with the metrics received over OTLP (0 picks a free one).",
            ),
        ] = 9464,
        allow_writes: Annotated[
            bool,
            typer.Option(
                "--allow-writes",
                envvar="FLEETFORGE_CLICKHOUSE_ALLOW_WRITES",
                help="Let the ClickHouse endpoint run INSERT, CREATE, DROP, ... (read-only by default).",
            ),
        ] = False,
        password: Annotated[
            str | None,
            typer.Option(
                "--password",
                envvar="FLEETFORGE_CLICKHOUSE_PASSWORD",
                show_default=False,
                help="Require this password (user `default`) on the ClickHouse endpoint; set it when binding "
                "beyond loopback.",
            ),
        ] = None,
        allowed_hosts: Annotated[
            list[str] | None,
            typer.Option(
                "--allowed-host",
                envvar="FLEETFORGE_CLICKHOUSE_ALLOWED_HOSTS",
                show_default=False,
                help="A Host name the ClickHouse endpoint and OTLP/HTTP answer besides IP addresses and localhost "
                "(against DNS rebinding); repeat for several, `*` for any (behind your own proxy).",
            ),
        ] = None,
        query_timeout: Annotated[
            int,
            typer.Option(
                "--query-timeout",
                envvar="FLEETFORGE_CLICKHOUSE_QUERY_TIMEOUT_S",
                min=1,
                max=86400,
                help="max_execution_time (seconds) of every query on the ClickHouse endpoint; clients may "
                "only lower it.",
            ),
        ] = 30,
        max_result_bytes: Annotated[
            int,
            typer.Option(
                "--max-result-bytes",
                envvar="FLEETFORGE_CLICKHOUSE_MAX_RESULT_BYTES",
                min=1,
                help="max_result_bytes of every query on the ClickHouse endpoint; clients may only lower it.",
            ),
        ] = 256 * 1024 * 1024,
        no_sink: Annotated[
            bool,
            typer.Option(
                "--no-sink",
                envvar="FLEETFORGE_OBSERVABILITY_NO_SINK",
                help="Do not stream the state store's outbox into ClickHouse.",
            ),
        ] = False,
        detach: Annotated[
            bool,
            typer.Option(
                "--detach",
                "-d",
                envvar="FLEETFORGE_OBSERVABILITY_DETACH",
                help="Embedded: run in the background and return once it answers.",
            ),
        ] = False,
        wait_s: Annotated[
            float,
            typer.Option(
                "--wait",
                envvar="FLEETFORGE_OBSERVABILITY_WAIT_S",
                min=1,
                help="Seconds --detach waits for the stack to answer.",
            ),
        ] = 60.0,
        compose_path: ComposeFileOpt = None,
    ) -> None:
        """Start the stack: `docker compose up -d` with Docker, else the embedded stack."""
        resolved = _resolve(mode)
        if resolved is Mode.COMPOSE:
            with guard():
                path = compose_file(compose_path)
            raise typer.Exit(compose(path, "up", "-d"))
        folder = _stack_dir(stack_dir, data_dir)
        running = running_state(folder)
        if running:
            die(
                f"an embedded stack already runs on {folder} (pid {running['pid']}); stop it with "
                "`fleetforge observability down`",
                1,
            )
        store_url = None if no_sink else (store or f"sqlite:///{(data_dir or DEFAULT_DATA_DIR) / 'state.db'}")
        if host not in ("127.0.0.1", "localhost", "::1") and password is None:
            err.print(
                f"[yellow]warning:[/] binding {host} without --password: anyone who reaches this address "
                "can read every telemetry table",
                highlight=False,
            )
        if detach:
            argv = [
                "observability",
                "up",
                "--mode",
                "embedded",
                "--stack-dir",
                str(folder),
                "--host",
                host,
                "--http-port",
                str(http_port),
                "--otlp-grpc-port",
                str(grpc_port),
                "--otlp-http-port",
                str(otlp_http_port),
                "--prometheus-port",
                str(prometheus_port),
            ]
            argv += ["--store", store_url] if store_url else ["--no-sink"]
            argv += ["--allow-writes"] if allow_writes else []
            argv += ["--query-timeout", str(query_timeout), "--max-result-bytes", str(max_result_bytes)]
            for name in allowed_hosts or ():
                argv += ["--allowed-host", name]
            env_password = {"FLEETFORGE_CLICKHOUSE_PASSWORD": password} if password else {}
            os.environ.update(env_password)  # passed through the environment, never on a command line
            _detach(argv, folder, wait_s)
            return
        _up_embedded(
            StackConfig(
                folder,
                store_url,
                host,
                http_port,
                grpc_port,
                otlp_http_port,
                prometheus_port,
                allow_writes,
                password,
                allowed_hosts=tuple(allowed_hosts or ()),
                query_timeout_s=query_timeout,
                max_result_bytes=max_result_bytes,
            )
        )

    @group.command("down")
    def down(
        mode: ModeOpt = Mode.AUTO,
        data_dir: DataDirOpt = None,
        stack_dir: StackDirOpt = None,
        timeout_s: Annotated[
            float,
            typer.Option(
                "--timeout",
                envvar="FLEETFORGE_OBSERVABILITY_TIMEOUT_S",
                min=1,
                help="Seconds to wait for the embedded stack to stop.",
            ),
        ] = 30.0,
        compose_path: ComposeFileOpt = None,
    ) -> None:
        """Stop the stack (`docker compose down`, or the embedded stack's process)."""
        folder = _stack_dir(stack_dir, data_dir)
        state = running_state(folder)
        if state is None and mode is not Mode.EMBEDDED and _resolve(mode) is Mode.COMPOSE:
            with guard():
                path = compose_file(compose_path)
            raise typer.Exit(compose(path, "down"))
        if state is None:
            err.print(f"No embedded stack runs on {folder}.", highlight=False)
            return
        with guard():
            pid = stop_running(folder, state, timeout_s)
        err.print(f"Stopped the embedded stack (pid {pid}).", highlight=False)

    @group.command("status")
    def status(
        mode: ModeOpt = Mode.AUTO,
        data_dir: DataDirOpt = None,
        stack_dir: StackDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        compose_path: ComposeFileOpt = None,
    ) -> None:
        """Is the stack up, and where does it listen? Exit 0 when up, 3 when not."""
        folder = _stack_dir(stack_dir, data_dir)
        state = running_state(folder)
        if state is None and mode is not Mode.EMBEDDED and _resolve(mode) is Mode.COMPOSE:
            with guard():
                path = compose_file(compose_path)
            raise typer.Exit(compose(path, "ps"))
        if state is None:
            if as_json:
                print_json({"mode": "embedded", "running": False, "stack_dir": str(folder)})
            else:
                out.print(f"embedded stack: not running (stack dir {folder})")
            raise typer.Exit(3)
        addresses = state.get("addresses", {})
        answering = ping(addresses.get("clickhouse_http", ""))
        doc = {
            "mode": "embedded",
            "running": True,
            "answering": answering,
            "pid": state["pid"],
            "stack_dir": str(folder),
            "addresses": addresses,
            "uptime_s": round(time.time() - float(state.get("started_at", time.time())), 1),
        }
        if as_json:
            print_json(doc)
            return
        out.print(
            f"embedded stack: running, pid {doc['pid']}, up {doc['uptime_s']}s, "
            f"{'answering' if answering else 'NOT answering'} (stack dir {folder})"
        )
        for name, url in addresses.items():
            out.print(f"  {name:16} {url}")
