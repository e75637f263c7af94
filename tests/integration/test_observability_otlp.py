"""OTLP end to end: the runtime (a demo fleet) exports spans and metrics with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at the embedded stack's receiver; they land in the collector exporter's ClickHouse tables and
on the stack's Prometheus endpoint under the names the operator guide's alert rules use. OTLP/HTTP with
protobuf and JSON bodies, logs included, and the outbox sink keeping the derived tables live."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.integration.test_observability_stack import Stack, fleetforge

pytestmark = pytest.mark.timeout(300)

GUIDE_METRICS = {
    "fleetforge.budget.tokens_remaining",
    "fleetforge.budget.cost_remaining",
    "fleetforge.budget.tokens_projected_burn",
    "fleetforge.budget.cost_projected_burn",
    "fleetforge.queue.lag_seconds",
    "fleetforge.step.retries",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Any], Path]]:
    root = tmp_path_factory.mktemp("otlp")
    # The stack follows the outbox of root/ff/state.db (the demo's store) into its own chDB.
    stack = Stack(root / "stack", "--data-dir", str(root / "ff"))
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stack.ports['grpc']}",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
            "OTEL_SERVICE_NAME": "fleetforge-demo",
        }
        summary = json.loads(
            fleetforge(
                "demo",
                "--no-serve",
                "--json",
                "--data-dir",
                str(root / "ff"),
                "--runs",
                "12",
                "--seed",
                "3",
                env=env,
            ).stdout
        )
        yield stack, summary, root / "ff"
    finally:
        stack.down()


def _scalar(stack: Stack, sql: str) -> Any:
    _, rows = stack.rows(sql)
    return rows[0][0]


def test_runtime_spans_arrive_in_otel_traces(run: tuple[Stack, dict[str, Any], Path]) -> None:
    stack, summary, data_dir = run
    _, rows = stack.rows(
        "SELECT SpanAttributes['fleetforge.span.kind'], count(), uniqExact(TraceId), any(ServiceName), any(SpanKind), "
        "any(length(TraceId)) FROM telemetry.otel_traces WHERE SpanAttributes['fleetforge.span.kind'] = 'run' "
        "GROUP BY 1"
    )
    assert rows, "no run span arrived"
    _, n, traces, service, kind, id_len = rows[0]
    assert int(n) == summary["runs"]["total"] and int(traces) == summary["runs"]["total"]
    assert (service, kind, id_len) == ("fleetforge-demo", "Internal", 32)
    # The spans' trace ids are the runs' own (the ones the events carry into the demo's ClickHouse).
    demo_traces = fleetforge(
        "sql",
        "--data-dir",
        str(data_dir),
        "--format",
        "TabSeparated",
        "SELECT DISTINCT trace_id FROM telemetry.run_events ORDER BY trace_id",
    ).stdout.split()
    _, got = stack.rows(
        "SELECT DISTINCT TraceId FROM telemetry.otel_traces WHERE SpanAttributes['fleetforge.span.kind'] = 'run' "
        "ORDER BY TraceId"
    )
    assert [r[0] for r in got] == demo_traces
    failed = _scalar(
        stack,
        "SELECT count() FROM telemetry.otel_traces WHERE SpanAttributes['fleetforge.span.kind'] = 'run' "
        "AND StatusCode = 'Error'",
    )
    assert int(failed) == summary["runs"]["by_status"].get("failed", 0)
    children = _scalar(stack, "SELECT count() FROM telemetry.otel_traces WHERE ParentSpanId != ''")
    assert int(children) >= summary["steps"]["attempts"] - summary["steps"]["by_status"].get("skipped", 0)


def test_runtime_metrics_arrive_in_otel_metrics_tables(run: tuple[Stack, dict[str, Any], Path]) -> None:
    stack, summary, _ = run
    _, rows = stack.rows(
        "SELECT DISTINCT MetricName FROM telemetry.otel_metrics_histogram UNION DISTINCT "
        "SELECT DISTINCT MetricName FROM telemetry.otel_metrics_sum"
    )
    assert {r[0] for r in rows} >= GUIDE_METRICS
    # Cumulative counter: the newest point of each series, summed, is every retry the demo scheduled.
    retries = _scalar(
        stack,
        "SELECT sum(v) FROM (SELECT argMax(Value, TimeUnix) AS v FROM telemetry.otel_metrics_sum "
        "WHERE MetricName = 'fleetforge.step.retries' GROUP BY Attributes)",
    )
    assert int(retries) == summary["steps"]["retries"]
    temporality = _scalar(
        stack,
        "SELECT any(AggregationTemporality) FROM telemetry.otel_metrics_histogram "
        "WHERE MetricName = 'fleetforge.queue.lag_seconds'",
    )
    assert int(temporality) == 2  # cumulative
    bounds = _scalar(
        stack,
        "SELECT any(ExplicitBounds) FROM telemetry.otel_metrics_histogram "
        "WHERE MetricName = 'fleetforge.queue.lag_seconds'",
    )
    assert bounds[0] == 0.01 and bounds[-1] == 600


def test_received_metrics_are_scraped_under_the_guides_names(run: tuple[Stack, dict[str, Any], Path]) -> None:
    stack, summary, _ = run
    text = httpx.get(f"http://127.0.0.1:{stack.ports['prom']}/metrics", timeout=10).text
    for series in (
        "fleetforge_budget_tokens_remaining_sum",
        "fleetforge_budget_tokens_remaining_count",
        "fleetforge_budget_tokens_projected_burn_sum",
        "fleetforge_queue_lag_seconds_bucket",
        "fleetforge_step_retries_total",
        "fleetforge_step_duration_seconds_bucket",
    ):
        assert f"\n{series}{{" in text, series
    retries = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fleetforge_step_retries_total{")
    )
    assert int(retries) == summary["steps"]["retries"]
    assert 'job="fleetforge-demo"' in text


def test_outbox_sink_keeps_the_stacks_derived_tables_live(run: tuple[Stack, dict[str, Any], Path]) -> None:
    stack, summary, _ = run
    deadline = time.monotonic() + 30
    runs = 0
    while time.monotonic() < deadline:
        runs = int(
            _scalar(stack, "SELECT sum(runs) FROM telemetry.run_latency_metrics WHERE status != ''") or 0
        )
        if runs == summary["runs"]["total"]:
            break
        time.sleep(0.5)
    assert runs == summary["runs"]["total"]


def test_otlp_http_protobuf_and_json(run: tuple[Stack, dict[str, Any], Path]) -> None:
    stack, _, _ = run
    base = f"http://127.0.0.1:{stack.ports['otlp_http']}"
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-http-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
    with provider.get_tracer("t").start_as_current_span("protobuf-span") as span:
        span.set_attribute("answer", 42)
    provider.shutdown()
    attrs = _scalar(
        stack, "SELECT SpanAttributes FROM telemetry.otel_traces WHERE SpanName = 'protobuf-span'"
    )
    assert attrs == {"answer": "42"}

    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "s"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "json-span",
                                "kind": 2,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000250000000",
                                "status": {"code": 2, "message": "boom"},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    resp = httpx.post(f"{base}/v1/traces", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    _, rows = stack.rows(
        f"SELECT TraceId, SpanId, SpanKind, Duration, StatusCode, StatusMessage, ServiceName "
        f"FROM telemetry.otel_traces WHERE TraceId = '{trace_id}'"
    )
    assert rows == [[trace_id, span_id, "Server", "250000000", "Error", "boom", "js"]] or rows == [
        [trace_id, span_id, "Server", 250000000, "Error", "boom", "js"]
    ]

    log = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "s"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000000",
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "body": {"stringValue": "hello log"},
                                "traceId": trace_id,
                                "spanId": span_id,
                                "attributes": [{"key": "k", "value": {"intValue": "7"}}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    assert httpx.post(f"{base}/v1/logs", json=log, timeout=10).status_code == 200
    _, rows = stack.rows(
        "SELECT Body, SeverityText, TraceId, LogAttributes FROM telemetry.otel_logs WHERE Body = 'hello log'"
    )
    assert rows == [["hello log", "INFO", trace_id, {"k": "7"}]]
    bad = httpx.post(
        f"{base}/v1/traces",
        content=b"not protobuf",
        timeout=10,
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert bad.status_code == 400
