"""Telemetry built from the environment: settings, the Prometheus endpoint, OTLP export over gRPC and
HTTP to in-process OTLP receivers, and the delivery metrics of outbox readers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetforge.adapters.readers.telemetry import DeliveryMetrics, RunIdMode, Telemetry, TelemetrySettings
from fleetforge.adapters.readers.telemetry.settings import OtlpTarget
from fleetforge.core.ids import run_span_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.names import EventKind as K
from tests.unit.test_telemetry_metrics import BUDGET_RUN, collect, run_workload

# -- settings -------------------------------------------------------------------------------------


def test_defaults_serve_prometheus_on_loopback_9464_and_export_nothing() -> None:
    s = TelemetrySettings.from_env({})
    assert (s.prometheus_host, s.prometheus_port) == ("127.0.0.1", 9464)
    assert s.traces is None and s.metrics is None and not s.disabled
    assert s.run_id_mode is RunIdMode.BUDGET and s.service_name == "fleetforge"


@pytest.mark.parametrize(("env", "traces", "metrics"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317"},
     OtlpTarget("http://localhost:4317", "grpc"), OtlpTarget("http://localhost:4317", "grpc")),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
     OtlpTarget("http://collector:4318/v1/traces", "http/protobuf"),
     OtlpTarget("http://collector:4318/v1/metrics", "http/protobuf")),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:443", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     OtlpTarget("https://otel.example:443/v1/traces", "http/protobuf"),
     OtlpTarget("https://otel.example:443/v1/metrics", "http/protobuf")),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces"},
     OtlpTarget("http://tempo:4318/v1/traces", "http/protobuf"), None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_METRICS_EXPORTER": "prometheus"},
     OtlpTarget("http://localhost:4317", "grpc"), None),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, OtlpTarget("http://localhost:4317", "grpc"), None),
])
def test_otlp_targets_follow_the_opentelemetry_env_conventions(
        env: dict[str, str], traces: OtlpTarget | None, metrics: OtlpTarget | None) -> None:
    s = TelemetrySettings.from_env(env)
    assert (s.traces, s.metrics) == (traces, metrics)


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_PROMETHEUS_PORT": "ninety"}, "OTEL_EXPORTER_PROMETHEUS_PORT: got 'ninety'"),
    ({"OTEL_EXPORTER_PROMETHEUS_PORT": "70000"}, "expected a port number from 0 to 65535"),
    ({"FLEETFORGE_METRICS_RUN_ID": "sometimes"}, "FLEETFORGE_METRICS_RUN_ID: got 'sometimes'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_PROTOCOL: got 'http/json', expected grpc or http/protobuf"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: got zipkin"),
    ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED: got 'maybe', expected true or false"),
])
def test_invalid_settings_name_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TelemetrySettings.from_env(env)


@pytest.mark.parametrize(("raw", "mode"), [("false", RunIdMode.NONE), ("0", RunIdMode.NONE), ("true", RunIdMode.ALL),
                                           ("ALL", RunIdMode.ALL), ("budget", RunIdMode.BUDGET)])
def test_run_id_switch(raw: str, mode: RunIdMode) -> None:
    assert TelemetrySettings.from_env({"FLEETFORGE_METRICS_RUN_ID": raw}).run_id_mode is mode


def test_disabled_sdk_records_and_serves_nothing() -> None:
    telemetry = Telemetry.from_env(env={"OTEL_SDK_DISABLED": "true"})
    telemetry.observer([])
    assert telemetry.meter_provider is None and telemetry.tracer_provider is None
    assert telemetry.start_prometheus() is None
    telemetry.shutdown()


# -- the Prometheus endpoint ----------------------------------------------------------------------


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Telemetry, str, list[Envelope]]]:
    telemetry = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    address = telemetry.start_prometheus()
    assert address is not None and address[0] == "127.0.0.1" and address[1] > 0
    events: list[Envelope] = []

    def observer(batch: list[Envelope]) -> None:
        events.extend(batch)
        telemetry.observer(batch)

    run_workload(tmp_path, [BUDGET_RUN], observer)
    yield telemetry, f"http://{address[0]}:{address[1]}/metrics", events
    telemetry.shutdown()


def test_prometheus_endpoint_exposes_the_guide_series(served: tuple[Telemetry, str, list[Envelope]]) -> None:
    _, url, events = served
    text = httpx.get(url).text
    run_id = events[0].run_id
    for series in ("fleetforge_budget_tokens_remaining_sum", "fleetforge_budget_tokens_remaining_count",
                   "fleetforge_budget_cost_remaining_sum", "fleetforge_budget_tokens_projected_burn_sum",
                   "fleetforge_budget_tokens_projected_burn_count", "fleetforge_budget_cost_projected_burn_sum",
                   "fleetforge_budget_tokens_limit", 'fleetforge_queue_lag_seconds_bucket{',
                   'le="0.01"', 'le="600.0"', "fleetforge_policy_events_total", "fleetforge_run_duration_seconds_sum",
                   "fleetforge_step_duration_seconds_bucket", "gen_ai_client_token_usage_bucket",
                   "gen_ai_client_operation_duration_seconds_count", f'run_id="{run_id}"',
                   'workspace="acme"', 'app="support"', 'step_type="llm"', 'slo_tier="standard"'):
        assert series in text, series
    assert "# TYPE fleetforge_queue_lag_seconds histogram" in text
    assert "# TYPE fleetforge_budget_tokens_remaining histogram" in text


def test_flushing_never_duplicates_a_scraped_series(served: tuple[Telemetry, str, list[Envelope]]) -> None:
    telemetry, url, _ = served
    assert telemetry.force_flush()
    for _ in range(2):
        samples = [line.rsplit(" ", 1)[0] for line in httpx.get(url).text.splitlines()
                   if line and not line.startswith("#")]
        assert len(samples) == len(set(samples)) > 100


def test_the_endpoint_uses_its_own_registry_not_the_global_one(
        served: tuple[Telemetry, str, list[Envelope]]) -> None:
    from prometheus_client import REGISTRY, generate_latest

    assert b"fleetforge_" not in generate_latest(REGISTRY)
    assert served[0].prometheus_address is not None


def test_a_busy_port_is_a_clear_config_error(served: tuple[Telemetry, str, list[Envelope]]) -> None:
    telemetry, _, _ = served
    address = telemetry.prometheus_address
    assert address is not None
    other = Telemetry.from_env(env={})
    with pytest.raises(ConfigError, match=f"cannot serve Prometheus metrics on 127.0.0.1:{address[1]}.*"
                                          "OTEL_EXPORTER_PROMETHEUS_PORT"):
        other.start_prometheus(port=address[1])
    other.shutdown()


def test_a_page_the_operator_opens_cannot_read_the_scrape_endpoint(
        served: tuple[Telemetry, str, list[Envelope]]) -> None:
    _, url, _ = served  # loopback only (the fixture checks the address); a rebound name is refused
    assert httpx.get(url, headers={"Host": "attacker.example"}).status_code == 421
    assert "access-control-allow-origin" not in httpx.get(url, headers={"Origin": "http://attacker.example"}).headers


def test_stop_frees_the_port(served: tuple[Telemetry, str, list[Envelope]]) -> None:
    telemetry, url, _ = served
    telemetry.stop_prometheus()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


# -- OTLP export ----------------------------------------------------------------------------------


class _Received:
    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metric_names: set[str] = set()
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def add_traces(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            self.spans += [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def add_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            self.metric_names |= {m.name for rm in req.resource_metrics for sm in rm.scope_metrics
                                  for m in sm.metrics}


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: _Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add_traces(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: _Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_export(received: _Received, events: list[Envelope]) -> None:
    run_id = events[0].run_id
    trace_id = bytes.fromhex(events[0].trace.trace_id)
    run_spans = [s for s in received.spans if s.span_id == bytes.fromhex(run_span_id(run_id))]
    assert len(run_spans) == 1 and run_spans[0].trace_id == trace_id
    attempts = [e for e in events if e.kind in (K.STEP_SUCCEEDED, K.STEP_FAILED, K.STEP_DENIED)]
    ids = {s.span_id for s in received.spans}
    assert all(bytes.fromhex(e.trace.span_id) in ids for e in attempts)
    assert {"fleetforge.budget.tokens_remaining", "fleetforge.queue.lag_seconds"} <= received.metric_names


def test_otlp_grpc_export_of_spans_and_metrics(tmp_path: Path) -> None:
    received = _Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(received), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        telemetry = Telemetry.from_env(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
        events: list[Envelope] = []
        run_workload(tmp_path, [BUDGET_RUN], lambda b: (events.extend(b), telemetry.observer(b)))
        assert telemetry.force_flush(10_000)
        telemetry.shutdown()
        _check_export(received, events)
    finally:
        server.stop(None)


def test_otlp_http_protobuf_export_of_spans_and_metrics(tmp_path: Path) -> None:
    received = _Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.paths.append(self.path)
            if self.path == "/v1/traces":
                received.add_traces(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            elif self.path == "/v1/metrics":
                received.add_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        telemetry = Telemetry.from_env(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                                            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
        events: list[Envelope] = []
        run_workload(tmp_path, [BUDGET_RUN], lambda b: (events.extend(b), telemetry.observer(b)))
        assert telemetry.force_flush(10_000)
        telemetry.shutdown()
        _check_export(received, events)
        assert set(received.paths) == {"/v1/traces", "/v1/metrics"}
    finally:
        server.shutdown()
        server.server_close()


# -- delivery metrics -----------------------------------------------------------------------------


def test_delivery_metrics_of_an_outbox_reader() -> None:
    reader = InMemoryMetricReader()
    delivery = DeliveryMetrics(MeterProvider(metric_readers=[reader]).get_meter("fleetforge"))
    delivery.sent("kafka", 10)
    delivery.sent("kafka", 5)
    delivery.failed("kafka", 2, "broker_down")
    delivery.retried("kafka")
    delivery.batch("kafka", 15, 0.02)
    oldest = time.time_ns() // 1000 - 30_000_000
    delivery.backlog("kafka", 7, oldest)
    delivery.backlog("clickhouse", 0, None)
    m = collect(reader)

    def value(name: str, consumer: str = "kafka") -> Any:
        return next(p for p in m[name].data.data_points if p.attributes["consumer"] == consumer)

    assert value("fleetforge.delivery.sent").value == 15
    assert value("fleetforge.delivery.failed").value == 2
    assert value("fleetforge.delivery.failed").attributes["error.type"] == "broker_down"
    assert value("fleetforge.delivery.retried").value == 1
    assert value("fleetforge.delivery.batch_size").sum == 15
    assert value("fleetforge.delivery.publish_latency").sum == pytest.approx(0.02)
    assert value("fleetforge.outbox.backlog").value == 7
    assert value("fleetforge.outbox.lag_seconds").value == pytest.approx(30, abs=2)
    assert value("fleetforge.outbox.backlog", "clickhouse").value == 0
    assert value("fleetforge.outbox.lag_seconds", "clickhouse").value == 0


def test_console_trace_exporter_prints_the_spans(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    telemetry = Telemetry.from_env(env={"OTEL_TRACES_EXPORTER": "console"})
    assert telemetry.tracer_provider is not None
    events: list[Envelope] = []
    run_workload(tmp_path, [BUDGET_RUN], lambda b: (events.extend(b), telemetry.observer(b)))
    telemetry.shutdown()
    out = capfd.readouterr().out
    assert '"fleetforge.span.kind": "run"' in out
    assert f'"trace_id": "0x{events[0].trace.trace_id}"' in out
