"""Exporters: OTLP (gRPC or HTTP/protobuf) for spans and metrics, and the Prometheus scrape server."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, make_asgi_app

from fleetforge.adapters.http.server import BackgroundServer
from fleetforge.adapters.readers.telemetry.settings import OtlpTarget

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


class PrometheusServer:
    """The scrape endpoint: prometheus_client's ASGI app for one registry on the shared HTTP server."""

    def __init__(self, server: BackgroundServer) -> None:
        self.server = server

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> PrometheusServer:
        """Listen on host:port (port 0 picks a free one); ConfigError when the address is unusable."""
        flag = "OTEL_EXPORTER_PROMETHEUS_PORT (0 picks a free one) or OTEL_EXPORTER_PROMETHEUS_HOST"
        server = BackgroundServer(make_asgi_app(registry), host=host, port=port, name="Prometheus metrics",
                                  port_flag=flag)
        return cls(server.start())

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.stop(timeout_s)
