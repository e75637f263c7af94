"""OpenTelemetry for FleetForge: metrics and spans derived from committed outbox events, the Prometheus
scrape endpoint (:9464) and OTLP export. Providers are built here or injected; never global."""

from fleetforge.adapters.readers.telemetry.delivery_metrics import DeliveryMetrics
from fleetforge.adapters.readers.telemetry.instruments import QUEUE_LAG_BUCKETS, metric_views
from fleetforge.adapters.readers.telemetry.metrics import MetricsRecorder
from fleetforge.adapters.readers.telemetry.providers import Telemetry
from fleetforge.adapters.readers.telemetry.settings import RunIdMode, TelemetrySettings
from fleetforge.adapters.readers.telemetry.spans import EventIdGenerator, SpanRecorder

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
