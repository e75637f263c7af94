"""Exporters: OTLP (gRPC or HTTP/protobuf) for spans and metrics, and the Prometheus scrape server."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, start_http_server

from fleetforge.adapters.otel.settings import OtlpTarget
from fleetforge.domain.errors import ConfigError

__all__ = ["PrometheusServer", "otlp_metric_exporter", "otlp_span_exporter"]


def otlp_span_exporter(target: OtlpTarget) -> SpanExporter:
    """An OTLP span exporter for `target`; headers, TLS and timeouts come from the OTEL_EXPORTER_OTLP_* env."""
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        return GrpcSpans(endpoint=target.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    return HttpSpans(endpoint=target.endpoint)


def otlp_metric_exporter(target: OtlpTarget) -> MetricExporter:
    """An OTLP metric exporter for `target` (cumulative temporality, like the Prometheus endpoint)."""
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics(endpoint=target.endpoint)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

    return HttpMetrics(endpoint=target.endpoint)


@dataclass(slots=True)
class PrometheusServer:
    """The prometheus_client HTTP server exposing one registry at /metrics."""

    server: WSGIServer
    thread: threading.Thread

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> PrometheusServer:
        """Listen on host:port (port 0 picks a free one); ConfigError when the address is unusable."""
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve Prometheus metrics on {host}:{port}: {exc.strerror or exc}; set "
                "OTEL_EXPORTER_PROMETHEUS_PORT to a free port (0 picks one) or OTEL_EXPORTER_PROMETHEUS_HOST "
                "to an address of this machine"
            ) from None
        return cls(server, thread)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout_s)
