"""`fleetforge telemetry`: the telemetry reader alone; and the wiring `worker`, `demo` and `observability up`
use to run it beside their own work (see docs/telemetry.md)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

import typer

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, err, guard
from fleetforge.adapters.cli.wiring import store_for
from fleetforge.adapters.otel import Telemetry
from fleetforge.adapters.otel.reader import DEFAULT_SERIES_RETENTION_S, READER_NAME, TelemetryService
from fleetforge.core.readers import ReaderOptions
from fleetforge.core.retention import format_duration, parse_duration
from fleetforge.domain.errors import ConfigError
from fleetforge.ports.readers import ReaderStateStore
from fleetforge.ports.store import Store

__all__ = ["ENV", "RunningTelemetry", "register", "start_telemetry"]

ENV = {
    "enabled": "FLEETFORGE_TELEMETRY",
    "retention": "FLEETFORGE_METRICS_SERIES_RETENTION",
    "lease": "FLEETFORGE_TELEMETRY_LEASE_MS",
}
DEFAULT_LEASE_MS = 10_000


@dataclass(slots=True)
class RunningTelemetry:
    """The process's Telemetry (its scrape endpoint, process metrics, spans) and, when on, the reader."""

    telemetry: Telemetry
    service: TelemetryService | None

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        self.telemetry.shutdown()


def _series_retention(env: Mapping[str, str]) -> float:
    raw = env.get(ENV["retention"], "").strip()
    if not raw:
        return DEFAULT_SERIES_RETENTION_S
    value = parse_duration(raw, ENV["retention"], allow_off=False)
    assert value is not None
    return value


def _lease_ms(env: Mapping[str, str]) -> int:
    raw = env.get(ENV["lease"], "").strip()
    try:
        value = int(raw) if raw else DEFAULT_LEASE_MS
    except ValueError:
        value = 0
    if value < 500:
        raise ConfigError(f"{ENV['lease']}: got {raw!r}, expected milliseconds >= 500 (default {DEFAULT_LEASE_MS})")
    return value


def start_telemetry(store: Store, holder: str, *, reader: bool = True, service_name: str = "fleetforge",
                    inflight: Callable[[], int] | None = None, env: Mapping[str, str] | None = None,
                    series_retention_s: float | None = None, lease_ms: int | None = None,
                    port: int | None = None) -> RunningTelemetry:
    """Build telemetry from the environment, serve /metrics (a busy port is only a warning) and, with `reader`,
    start the telemetry reader: it publishes the fleet's metrics while this process holds its lease.
    `inflight` feeds the process gauge of steps in flight. Raises ConfigError for invalid settings."""
    env = os.environ if env is None else env
    retention_s = _series_retention(env) if series_retention_s is None else series_retention_s
    ttl_ms = _lease_ms(env) if lease_ms is None else lease_ms
    telemetry = Telemetry.from_env(service_name, env)
    if inflight is not None:
        telemetry.observe_inflight(inflight)
    try:
        address = telemetry.start_prometheus(port=port)
        if address is not None:
            err.print(f"Prometheus metrics on http://{address[0]}:{address[1]}/metrics", highlight=False)
    except ConfigError as exc:
        err.print(f"[yellow]warning:[/] no Prometheus endpoint: {exc}", highlight=False)
    service = None
    if reader and telemetry.meter_provider is not None:
        rs: ReaderStateStore = store  # both stores implement ReaderStateStore
        service = TelemetryService(rs, telemetry.reader(rs, series_retention_s=retention_s), holder=holder,
                                   options=ReaderOptions(batch_size=2000, lease_ttl_ms=ttl_ms),
                                   observer=telemetry.delivery).start()
    return RunningTelemetry(telemetry, service)


def register(app: typer.Typer) -> None:
    @app.command("telemetry")
    def telemetry(
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        holder: Annotated[str | None, typer.Option(
            "--id", envvar="FLEETFORGE_WORKER_ID", show_default=False,
            help="Lease holder id (default: host-pid).")] = None,
        port: Annotated[int | None, typer.Option(
            "--port", envvar="OTEL_EXPORTER_PROMETHEUS_PORT", min=0, max=65535, show_default=False,
            help="Prometheus scrape port (default 9464; 0 picks a free one).")] = None,
        series_retention: Annotated[str, typer.Option(
            "--series-retention", envvar=ENV["retention"],
            help="How long per-run series (run_id) stay in the scrape after their run ended.")]
        = format_duration(DEFAULT_SERIES_RETENTION_S),
        lease_ms: Annotated[int, typer.Option(
            "--lease-ms", envvar=ENV["lease"], min=500,
            help="Telemetry lease time: a standby takes over this long after the holder died.")] = DEFAULT_LEASE_MS,
    ) -> None:
        """Publish the fleet's metrics and spans from the outbox (one process of the fleet at a time) until
        interrupted; `fleetforge worker` does the same by default."""
        with guard():
            retention_s = parse_duration(series_retention, "--series-retention", allow_off=False)
            st = store_for(store, data_dir)
            running = start_telemetry(st, holder or f"{socket.gethostname()}-{os.getpid()}",
                                      service_name="fleetforge-telemetry", series_retention_s=retention_s,
                                      lease_ms=lease_ms, port=port)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            err.print(f"telemetry reader {READER_NAME!r} running; standing by while another process holds it",
                      highlight=False)
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                running.stop()
