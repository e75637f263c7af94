"""OpenTelemetry for FleetForge: metrics and spans derived from committed outbox events, the Prometheus
scrape endpoint (:9464) and OTLP export. Providers are built here or injected; never global."""

from fleetforge.adapters.otel.delivery import DeliveryMetrics
from fleetforge.adapters.otel.instruments import QUEUE_LAG_BUCKETS, metric_views
from fleetforge.adapters.otel.metrics import MetricsRecorder
from fleetforge.adapters.otel.settings import RunIdMode, TelemetrySettings
from fleetforge.adapters.otel.spans import EventIdGenerator, SpanRecorder
from fleetforge.adapters.otel.telemetry import Telemetry

__all__ = [
    "QUEUE_LAG_BUCKETS",
    "DeliveryMetrics",
    "EventIdGenerator",
    "MetricsRecorder",
    "RunIdMode",
    "SpanRecorder",
    "Telemetry",
    "TelemetrySettings",
    "metric_views",
]
