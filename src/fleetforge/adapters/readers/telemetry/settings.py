"""Telemetry settings read from the environment (OpenTelemetry conventions plus FleetForge switches)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from fleetforge.domain import envparse
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.secrets import redact_url

__all__ = [
    "DEFAULT_PROMETHEUS_HOST",
    "DEFAULT_PROMETHEUS_PORT",
    "OtlpTarget",
    "RunIdMode",
    "TelemetrySettings",
]

DEFAULT_PROMETHEUS_HOST: Final = "127.0.0.1"
DEFAULT_PROMETHEUS_PORT: Final = 9464
PROTOCOLS: Final = ("grpc", "http/protobuf")


class RunIdMode(StrEnum):
    """Which metrics carry the `run_id` attribute (env FLEETFORGE_METRICS_RUN_ID)."""

    BUDGET = "budget"  # the budget metrics only (the guide's per-run budget alert needs it)
    ALL = "all"  # every run and step metric
    NONE = "none"  # no metric: bounded cardinality

    @classmethod
    def parse(cls, text: str, source: str = "FLEETFORGE_METRICS_RUN_ID") -> RunIdMode:
        value = text.strip().lower()
        if value in envparse.TRUE:
            return cls.ALL
        if value in envparse.FALSE:
            return cls.NONE
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"{source}: got {text!r}, expected budget (default), all (or true) or none (or false)"
            ) from None


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    """Where one signal goes over OTLP: the endpoint as the exporter expects it, and the protocol."""

    endpoint: str
    protocol: str  # grpc | http/protobuf


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Everything `Telemetry.from_env` needs, parsed and checked."""

    service_name: str = "fleetforge"
    disabled: bool = False
    run_id_mode: RunIdMode = RunIdMode.BUDGET
    prometheus_host: str = DEFAULT_PROMETHEUS_HOST
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT
    traces: OtlpTarget | None = None
    metrics: OtlpTarget | None = None
    console_traces: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, service_name: str = "fleetforge") -> TelemetrySettings:
        """Parse the environment; raises ConfigError naming the variable and the fix."""
        env = os.environ if env is None else env
        disabled = _flag(env, "OTEL_SDK_DISABLED")
        trace_exporters = _exporters(env, "OTEL_TRACES_EXPORTER", ("otlp", "console", "none"))
        metric_exporters = _exporters(env, "OTEL_METRICS_EXPORTER", ("otlp", "prometheus", "none"))
        return cls(
            service_name=env.get("OTEL_SERVICE_NAME") or service_name,
            disabled=disabled,
            run_id_mode=RunIdMode.parse(env.get("FLEETFORGE_METRICS_RUN_ID") or "budget"),
            prometheus_host=env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or DEFAULT_PROMETHEUS_HOST,
            prometheus_port=_port(env.get("OTEL_EXPORTER_PROMETHEUS_PORT")),
            traces=_otlp(env, "TRACES", "v1/traces", trace_exporters),
            metrics=_otlp(env, "METRICS", "v1/metrics", metric_exporters),
            console_traces="console" in (trace_exporters or ()),
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = envparse.value(env, name)
    return raw is not None and envparse.boolean(raw, name)


def _exporters(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    """The comma-separated exporter list, or None when the variable is unset."""
    raw = envparse.value(env, name)
    return None if raw is None else envparse.comma_list(raw, name, allowed=allowed)


def _port(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_PROMETHEUS_PORT
    return envparse.integer(raw, "OTEL_EXPORTER_PROMETHEUS_PORT", lo=0, hi=65535,
                            what="a port number", default=f"{DEFAULT_PROMETHEUS_PORT}; 0 picks a free port")


def _otlp(env: Mapping[str, str], signal: str, path: str, exporters: tuple[str, ...] | None) -> OtlpTarget | None:
    """The OTLP target of `signal` (TRACES | METRICS), or None when OTLP export is off for it.

    OTLP is on when the signal's exporter list names `otlp`, or when it is unset and an endpoint is set.
    Without an explicit protocol, port 4318 means http/protobuf and anything else gRPC (the collector's
    4317, which the operator guide uses).
    """
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    wanted = "otlp" in exporters if exporters is not None else bool(specific or generic)
    if not wanted:
        return None
    var = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    protocol = (env.get(var) or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip().lower()
    base = specific or generic or "http://localhost:4317"
    parts = urlsplit(base if "://" in base else f"http://{base}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if not parts.hostname or port == -1:
        source = f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT" if specific else "OTEL_EXPORTER_OTLP_ENDPOINT"
        raise ConfigError(f"{source}: got {redact_url(base)!r}, expected a URL such as http://localhost:4317")
    if not protocol:
        protocol = "http/protobuf" if port == 4318 else "grpc"
    if protocol not in PROTOCOLS:
        source = var if env.get(var) else "OTEL_EXPORTER_OTLP_PROTOCOL"
        raise ConfigError(f"{source}: got {protocol!r}, expected grpc or http/protobuf "
                          "(http/json is not supported by the Python exporters)")
    if protocol == "http/protobuf" and not specific:
        endpoint = f"{base.rstrip('/')}/{path}"
    else:
        endpoint = base
    return OtlpTarget(endpoint, protocol)
