"""Running telemetry in a process: the Telemetry facade from the environment, its scrape endpoint and, when
on, the telemetry reader (used by `fleetforge worker`, `telemetry`, `demo` and `observability up`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from fleetforge.adapters.readers.telemetry.providers import Telemetry
from fleetforge.adapters.readers.telemetry.reader import DEFAULT_SERIES_RETENTION_S, READER_OPTIONS, TelemetryService
from fleetforge.domain.envparse import duration
from fleetforge.domain.errors import ConfigError
from fleetforge.ports.readers import ReaderStateStore
from fleetforge.ports.store import Store

__all__ = ["DEFAULT_LEASE_MS", "ENV", "RunningTelemetry", "start_telemetry"]

log = logging.getLogger("fleetforge.telemetry")

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
    value = duration(raw, ENV["retention"], allow_off=False)
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
    start the telemetry reader: it publishes the fleet's metrics while this process holds its lease. A process
    with neither a scrape endpoint nor an OTLP exporter does not run the reader: holding the lease, it would
    publish the fleet's metrics where no one sees them (e.g. a second worker on a host, the port taken by
    the first). `inflight` feeds the process gauge of steps in flight. Raises ConfigError for invalid
    settings."""
    env = os.environ if env is None else env
    retention_s = _series_retention(env) if series_retention_s is None else series_retention_s
    ttl_ms = _lease_ms(env) if lease_ms is None else lease_ms
    telemetry = Telemetry.from_env(service_name, env)
    if inflight is not None:
        telemetry.observe_inflight(inflight)
    try:
        telemetry.start_prometheus(port=port)
    except ConfigError as exc:
        log.warning("no Prometheus endpoint: %s", exc)
    service = None
    if reader and telemetry.meter_provider is not None:
        if telemetry.prometheus_address is None and not telemetry.pushes:
            log.warning("the telemetry reader is not started: with no Prometheus endpoint and no OTLP exporter "
                        "this process would publish the fleet's metrics nowhere; a process that serves them "
                        "takes the lease")
        else:
            rs: ReaderStateStore = store  # both stores implement ReaderStateStore
            service = TelemetryService(rs, telemetry.reader(rs, series_retention_s=retention_s), holder=holder,
                                       options=replace(READER_OPTIONS, lease_ttl_ms=ttl_ms),
                                       observer=telemetry.delivery).start()
    return RunningTelemetry(telemetry, service)
