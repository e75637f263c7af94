"""`fleetforge telemetry`: the telemetry reader alone; and the wiring `worker`, `demo` and `observability up`
use to run it beside their own work (see docs/telemetry.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, err, guard
from fleetforge.adapters.cli.wiring import store_for
from fleetforge.adapters.process import process_id, stop_event
from fleetforge.adapters.readers.telemetry.reader import DEFAULT_SERIES_RETENTION_S, READER_NAME
from fleetforge.adapters.readers.telemetry.service import DEFAULT_LEASE_MS, ENV, RunningTelemetry
from fleetforge.adapters.readers.telemetry.service import start_telemetry as _start
from fleetforge.domain.envparse import duration, format_duration
from fleetforge.ports.store import Store

__all__ = ["register", "start_telemetry"]


def start_telemetry(store: Store, holder: str, **options: Any) -> RunningTelemetry:
    """`otel.service.start_telemetry`, printing where /metrics is served."""
    running = _start(store, holder, **options)
    address = running.telemetry.prometheus_address
    if address is not None:
        err.print(f"Prometheus metrics on http://{address[0]}:{address[1]}/metrics", highlight=False)
    return running

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
            retention_s = duration(series_retention, "--series-retention", allow_off=False)
            st = store_for(store, data_dir)
            running = start_telemetry(st, process_id(holder),
                                      service_name="fleetforge-telemetry", series_retention_s=retention_s,
                                      lease_ms=lease_ms, port=port)
            if running.service is None:
                running.stop()
                why = ("OTEL_SDK_DISABLED=true" if running.telemetry.meter_provider is None else
                       "the Prometheus port is taken (pass another --port; 0 picks a free one) and no OTLP "
                       "exporter is set (OTEL_EXPORTER_OTLP_ENDPOINT)")
                die(f"the telemetry reader would publish nothing: {why}", 2)
            with stop_event() as stop:
                err.print(f"telemetry reader {READER_NAME!r} running; standing by while another process holds "
                          "it", highlight=False)
                try:
                    while not stop.wait(0.5):
                        pass
                finally:
                    running.stop()
