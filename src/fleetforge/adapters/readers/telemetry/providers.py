"""The telemetry facade: providers built from the environment (or injected), the event observer,
the Prometheus scrape endpoint, flush and shutdown."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import NoOpMeter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from fleetforge import __version__
from fleetforge.adapters.readers.telemetry.delivery_metrics import DeliveryMetrics
from fleetforge.adapters.readers.telemetry.endpoints import PrometheusServer, otlp_metric_exporter, otlp_span_exporter
from fleetforge.adapters.readers.telemetry.instruments import METER_NAME, metric_views
from fleetforge.adapters.readers.telemetry.metrics import MetricsRecorder
from fleetforge.adapters.readers.telemetry.reader import (
    DEFAULT_SERIES_RETENTION_S,
    READER_NAME,
    MeterGeneration,
    TelemetryReader,
)
from fleetforge.adapters.readers.telemetry.settings import (
    DEFAULT_PROMETHEUS_HOST,
    DEFAULT_PROMETHEUS_PORT,
    OtlpTarget,
    RunIdMode,
    TelemetrySettings,
)
from fleetforge.adapters.readers.telemetry.spans import EventIdGenerator, SpanRecorder
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.names import Metric
from fleetforge.ports.readers import ReaderStateStore

__all__ = ["Telemetry"]

log = logging.getLogger("fleetforge.telemetry")
_ERROR_LOG_INTERVAL_S = 60.0


class Telemetry:
    """Metrics and spans derived from committed events, through OpenTelemetry providers it is given.

    The runtime never calls it: `reader(store)` gives the telemetry reader that derives the metrics and
    spans from the outbox (`observer` remains for tests that feed events directly). Providers are never
    installed globally.
    `registry` is the prometheus_client registry a PrometheusMetricReader of `meter_provider` is
    registered on; `start_prometheus` serves it. Providers passed in stay the caller's: `shutdown`
    shuts down only the providers `from_env` built.
    """

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
        run_id_mode: RunIdMode = RunIdMode.BUDGET,
        prometheus_host: str = DEFAULT_PROMETHEUS_HOST,
        prometheus_port: int = DEFAULT_PROMETHEUS_PORT,
        owns_providers: bool = False,
        push_readers: list[MetricReader] | None = None,
    ) -> None:
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self.registry = registry
        self.run_id_mode = run_id_mode
        self.prometheus_host = prometheus_host
        self.prometheus_port = prometheus_port
        self._owns = owns_providers
        self._push_readers = push_readers
        meter = meter_provider.get_meter(METER_NAME, __version__) if meter_provider is not None else None
        self.metrics = MetricsRecorder(meter, run_id_mode=run_id_mode) if meter is not None else None
        self.delivery = DeliveryMetrics(meter if meter is not None else NoOpMeter(METER_NAME))
        self.spans = SpanRecorder(tracer_provider) if tracer_provider is not None else None
        self._server: PrometheusServer | None = None
        self._lock = threading.Lock()
        self._last_error_log = 0.0
        self.errors = 0
        self.settings: TelemetrySettings | None = None
        self._resource: Resource | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_env(cls, service_name: str = "fleetforge", env: Mapping[str, str] | None = None) -> Telemetry:
        """Build providers from the OpenTelemetry env vars (see docs/telemetry.md).

        Metrics: a PrometheusMetricReader on a registry of this object (served by `start_prometheus`),
        plus OTLP when OTEL_EXPORTER_OTLP_ENDPOINT (or _METRICS_ENDPOINT) is set. Spans: only when an
        exporter is configured (OTLP endpoint, or OTEL_TRACES_EXPORTER=console). OTEL_SDK_DISABLED=true
        gives a Telemetry that records nothing. Raises ConfigError for invalid settings.
        """
        settings = TelemetrySettings.from_env(env, service_name=service_name)
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: TelemetrySettings) -> Telemetry:
        """Build the providers `settings` describe."""
        if settings.disabled:
            return cls(run_id_mode=settings.run_id_mode, prometheus_host=settings.prometheus_host,
                       prometheus_port=settings.prometheus_port)
        resource = Resource.create({SERVICE_NAME: settings.service_name, "service.version": __version__})
        registry = CollectorRegistry()
        push: list[MetricReader] = []
        if settings.metrics is not None:
            push.append(PeriodicExportingMetricReader(otlp_metric_exporter(settings.metrics)))
        meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry), *push],
                                       resource=resource, views=metric_views(), shutdown_on_exit=False)
        tracer_provider = None
        if settings.traces is not None or settings.console_traces:
            tracer_provider = TracerProvider(resource=resource, id_generator=EventIdGenerator(),
                                             shutdown_on_exit=False)
            if settings.traces is not None:
                tracer_provider.add_span_processor(BatchSpanProcessor(otlp_span_exporter(settings.traces)))
            if settings.console_traces:
                tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        made = cls(meter_provider=meter_provider, tracer_provider=tracer_provider, registry=registry,
                   run_id_mode=settings.run_id_mode, prometheus_host=settings.prometheus_host,
                   prometheus_port=settings.prometheus_port, owns_providers=True, push_readers=push)
        made.settings, made._resource = settings, resource
        return made

    def observe_inflight(self, count: Callable[[], int]) -> None:
        """Publish `count()` as this process's `fleetforge.worker.inflight_steps` gauge."""
        if self.meter_provider is None:
            return
        meter = self.meter_provider.get_meter(METER_NAME, __version__)
        meter.create_observable_gauge(str(Metric.WORKER_INFLIGHT_STEPS),
                                      [lambda options: [Observation(count())]], unit="{step}",
                                      description="Steps this worker process executes now")

    # -- the telemetry reader -----------------------------------------------------------------

    def meter_generation(self) -> MeterGeneration:
        """A new MeterProvider for fleet series: scraped through a private registry (shown on this process's
        endpoint by the reader while it holds the lease) and pushed over OTLP when configured."""
        registry = CollectorRegistry(auto_describe=False)
        readers: list[MetricReader] = [PrometheusMetricReader(registry=registry, disable_target_info=True)]
        if self._otlp_metrics is not None:
            readers.append(PeriodicExportingMetricReader(otlp_metric_exporter(self._otlp_metrics)))
        provider = MeterProvider(metric_readers=readers, resource=self._resource or Resource.create({}),
                                 views=metric_views(), shutdown_on_exit=False)
        return MeterGeneration(provider, registry)

    def reader(self, store: ReaderStateStore, *, series_retention_s: float = DEFAULT_SERIES_RETENTION_S,
               name: str = READER_NAME) -> TelemetryReader:
        """A telemetry reader recording into this object's spans and fresh fleet meter generations, its
        series shown on this object's Prometheus registry."""
        reader = TelemetryReader(store, self.meter_generation, spans=self.spans, run_id_mode=self.run_id_mode,
                                 series_retention_s=series_retention_s, name=name)
        if self.registry is not None:
            reader.expose_on(self.registry)
        return reader

    # -- the observer -------------------------------------------------------------------------

    def observer(self, events: list[Envelope]) -> None:
        """Record the metrics and spans of one committed transaction's events. Never raises."""
        try:
            if self.metrics is not None:
                self.metrics.record(events)
            if self.spans is not None:
                self.spans.record(events)
        except Exception:  # telemetry must never break the runtime
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.exception("telemetry observer failed (%d failures so far)", self.errors)

    # -- Prometheus ---------------------------------------------------------------------------

    def start_prometheus(self, host: str | None = None, port: int | None = None) -> tuple[str, int] | None:
        """Serve /metrics on host:port (defaults: OTEL_EXPORTER_PROMETHEUS_HOST/PORT, 127.0.0.1:9464).

        Returns the bound (host, port), or None when there is nothing to serve (SDK disabled or no
        registry given). Raises ConfigError when the address cannot be bound.
        """
        if self.registry is None:
            log.info("Prometheus endpoint not started: telemetry is disabled or has no registry")
            return None
        with self._lock:
            if self._server is None:
                host = self.prometheus_host if host is None else host
                port = self.prometheus_port if port is None else port
                self._server = PrometheusServer.start(self.registry, host, port)
                log.info("Prometheus metrics on http://%s:%d/metrics", *self._server.address)
            return self._server.address

    @property
    def _otlp_metrics(self) -> OtlpTarget | None:
        return self.settings.metrics if self.settings is not None else None

    @property
    def pushes(self) -> bool:
        """Telemetry leaves this process without a scrape: an OTLP metrics exporter or a span exporter."""
        return self._otlp_metrics is not None or self.spans is not None

    @property
    def prometheus_address(self) -> tuple[str, int] | None:
        """The bound (host, port) of the scrape endpoint, None when not serving."""
        return self._server.address if self._server is not None else None

    def stop_prometheus(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    # -- lifecycle ----------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export what is buffered (spans, OTLP metrics); False when an export timed out.

        Only push readers are flushed: a PrometheusMetricReader queues every collection until the next
        scrape, so flushing it would make that scrape expose each series twice. `push_readers` None
        (providers passed in) flushes the whole MeterProvider unless a Prometheus `registry` was given.
        """
        ok = True
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(timeout_millis) and ok
        if self._push_readers is not None:
            for reader in self._push_readers:
                ok = reader.force_flush(timeout_millis) and ok
        elif self.meter_provider is not None and self.registry is None:
            ok = self.meter_provider.force_flush(timeout_millis) and ok
        return ok

    def shutdown(self, timeout_millis: int = 10_000) -> None:
        """Stop serving, flush, and shut down the providers this object built."""
        self.stop_prometheus()
        self.force_flush(timeout_millis)
        if self._owns:
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                self.meter_provider.shutdown(timeout_millis)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()
