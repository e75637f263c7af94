"""Pure parts of the embedded observability stack: the query lexer (FORMAT labelling), Native type parsing and framing,
OTLP rows, and the Prometheus bridge's names and values."""

from __future__ import annotations

import struct

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from prometheus_client import CollectorRegistry, generate_latest

from fleetforge.adapters.devstack.native import NativeUnsupported, parse_type, reencode
from fleetforge.adapters.devstack.otlp_rows import any_text, metric_rows, ns_text, parse_json, span_rows
from fleetforge.adapters.devstack.prombridge import PrometheusBridge, prometheus_name, prometheus_unit
from fleetforge.adapters.devstack.sqltext import shape

# -- sqltext ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "statements", "kind", "fmt"),
    [
        ("SELECT 1", 1, "SELECT", None),
        ("  select 1 FORMAT JSONEachRow", 1, "SELECT", "JSONEachRow"),
        ("SELECT 1;", 1, "SELECT", None),
        ("SELECT 1; DROP TABLE t", 2, "SELECT", None),
        ("SELECT ';' AS x, \"a;b\", `c;d` -- ; comment\n FROM t /* ; */", 1, "SELECT", None),
        ("(SELECT 1) UNION ALL (SELECT 2) FORMAT CSV", 1, "SELECT", "CSV"),
        ("WITH x AS (SELECT 1 FORMAT JSON) SELECT * FROM x", 1, "WITH", None),
        ("SELECT format('{}', 1)", 1, "SELECT", None),
        ("SELECT $$; FORMAT x$$ AS s FORMAT TSV", 1, "SELECT", "TSV"),
        ("-- leading comment\nINSERT INTO t VALUES (1)", 1, "INSERT", None),
        ("SELECT 'it\\'s' ; ", 1, "SELECT", None),
        ("", 0, "", None),
        ("show tables from telemetry", 1, "SHOW", None),
    ],
)
def test_shape(sql: str, statements: int, kind: str, fmt: str | None) -> None:
    found = shape(sql)
    assert (found.statements, found.kind, found.output_format) == (statements, kind, fmt)


# -- Native ------------------------------------------------------------------------------------------


def test_parse_type() -> None:
    assert parse_type("UInt64").name == "UInt64"
    t = parse_type("Map(LowCardinality(String), Array(Tuple(a String, `b c` DateTime64(9, 'UTC'))))")
    assert t.name == "Map" and t.args == (
        "LowCardinality(String)",
        "Array(Tuple(a String, `b c` DateTime64(9, 'UTC')))",
    )
    assert parse_type("Enum8('a,b' = 1, 'c' = 2)").args == ("'a,b' = 1", "'c' = 2")
    assert parse_type("Decimal(38, 6)").args == ("38", "6")


def _varuint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(s: bytes) -> bytes:
    return _varuint(len(s)) + s


def _block(columns: list[tuple[str, str, bytes]], rows: int) -> bytes:
    out = _varuint(len(columns)) + _varuint(rows)
    for name, ctype, data in columns:
        out += _string(name.encode()) + _string(ctype.encode()) + data
    return out


def test_reencode_adds_block_info_and_custom_serialization_bytes() -> None:
    strings = b"".join(_string(s) for s in (b"a", b"bc"))
    nullable = b"\x00\x01" + struct.pack("<QQ", 7, 0)
    lowcard = (
        struct.pack("<Q", 1)
        + struct.pack("<Q", (1 << 9) | 0)
        + struct.pack("<Q", 2)
        + strings
        + struct.pack("<Q", 2)
        + b"\x00\x01"
    )
    array = struct.pack("<QQ", 1, 3) + struct.pack("<3i", 1, 2, 3)
    cols = [
        ("s", "String", strings),
        ("n", "Nullable(UInt64)", nullable),
        ("lc", "LowCardinality(String)", lowcard),
        ("a", "Array(Int32)", array),
    ]
    raw = _block(cols, 2) + _block(cols[:1], 2)
    assert reencode(raw, 0) == raw
    assert reencode(raw, 54405) == (
        b"\x01\x00\x02\xff\xff\xff\xff\x00"
        + _block(cols, 2)
        + b"\x01\x00\x02\xff\xff\xff\xff\x00"
        + _block(cols[:1], 2)
    )
    custom = [(n, t + "", d) for n, t, d in cols]
    high = reencode(raw, 54460)
    expected_first = b"\x01\x00\x02\xff\xff\xff\xff\x00" + _varuint(4) + _varuint(2)
    for name, ctype, data in custom:
        expected_first += _string(name.encode()) + _string(ctype.encode()) + b"\x00" + data
    assert high.startswith(expected_first)
    assert len(high) == len(raw) + 2 * 8 + 5


def test_reencode_refuses_opaque_types() -> None:
    raw = _block([("s", "AggregateFunction(uniq, UInt64)", b"\x00" * 8)], 1)
    with pytest.raises(NativeUnsupported, match="AggregateFunction"):
        reencode(raw, 54460)


# -- OTLP rows -----------------------------------------------------------------------------------------


def test_any_text_and_ns_text() -> None:
    assert any_text(AnyValue(string_value="x")) == "x"
    assert any_text(AnyValue(int_value=7)) == "7" and any_text(AnyValue(bool_value=True)) == "true"
    assert (
        any_text(AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="a")])))
        == '[1,"a"]'
    )
    assert ns_text(1_700_000_000_123_456_789) == "2023-11-14 22:13:20.123456789"


def test_span_rows_follow_the_exporter() -> None:
    req = parse_json(
        b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":'
        b'{"stringValue":"svc"}}]},"scopeSpans":[{"scope":{"name":"sc","version":"1"},"spans":[{'
        b'"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",'
        b'"parentSpanId":"aaaaaaaaaaaaaaaa","name":"op","kind":3,"startTimeUnixNano":"1000",'
        b'"endTimeUnixNano":"4000","attributes":[{"key":"k","value":{"doubleValue":1.5}}],'
        b'"events":[{"timeUnixNano":"2000","name":"ev"}],"status":{"code":1}}]}]}]}',
        ExportTraceServiceRequest(),
    )
    (row,) = span_rows(req)
    assert row["TraceId"] == "5b8efff798038103d269b633813fc60c" and row["ParentSpanId"] == "aaaaaaaaaaaaaaaa"
    assert (row["SpanKind"], row["StatusCode"], row["Duration"], row["ServiceName"]) == (
        "Client",
        "Ok",
        3000,
        "svc",
    )
    assert row["SpanAttributes"] == {"k": "1.5"} and row["Events.Name"] == ["ev"]
    with pytest.raises(ValueError, match="OTLP/JSON"):
        parse_json(b"{not json", ExportTraceServiceRequest())


def _metrics(points: str, kind: str = "sum", extra: str = "") -> ExportMetricsServiceRequest:
    body = (
        '{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"ff"}}]},'
        '"scopeMetrics":[{"scope":{"name":"fleetforge","version":"0.1"},"metrics":[{"name":"fleetforge.step.retries",'
        f'"unit":"{{retry}}","{kind}":{{{extra}"dataPoints":[{points}]}}}}]}}]}}]}}'
    )
    return parse_json(body.encode(), ExportMetricsServiceRequest())


def test_metric_rows_tables() -> None:
    req = _metrics(
        '{"asInt":"3","timeUnixNano":"5","attributes":[{"key":"app","value":{"stringValue":"a"}}]}',
        extra='"aggregationTemporality":2,"isMonotonic":true,',
    )
    ((table, row),) = metric_rows(req)
    assert table == "otel_metrics_sum" and row["Value"] == 3.0 and row["IsMonotonic"] is True
    assert (
        row["Attributes"] == {"app": "a"} and row["ScopeName"] == "fleetforge" and row["ServiceName"] == "ff"
    )


# -- Prometheus bridge ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "suffix"),
    [
        ("s", "seconds"),
        ("{token}", ""),
        ("By", "bytes"),
        ("1", ""),
        ("m/s", "meters_per_second"),
        ("{USD}", ""),
    ],
)
def test_units(unit: str, suffix: str) -> None:
    assert prometheus_unit(unit) == suffix


def test_bridge_exposes_counters_and_histograms_with_the_runtime_names() -> None:
    now = [100.0]
    bridge = PrometheusBridge(expiry_s=300, clock=lambda: now[0])
    bridge.record(
        _metrics(
            '{"asInt":"3","attributes":[{"key":"app","value":{"stringValue":"a"}}]}',
            extra='"aggregationTemporality":2,"isMonotonic":true,',
        )
    )
    bridge.record(
        _metrics(
            '{"asInt":"2","attributes":[{"key":"app","value":{"stringValue":"a"}}]}',
            extra='"aggregationTemporality":1,"isMonotonic":true,',
        )
    )  # delta adds up
    hist = (
        '{"resourceMetrics":[{"scopeMetrics":[{"scope":{"name":"fleetforge"},"metrics":[{'
        '"name":"fleetforge.queue.lag_seconds","unit":"s","histogram":{"aggregationTemporality":2,'
        '"dataPoints":[{"count":"3","sum":0.5,"bucketCounts":["1","2","0"],"explicitBounds":[0.01,1.0]}]}}]}]}]}'
    )
    bridge.record(parse_json(hist.encode(), ExportMetricsServiceRequest()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(bridge)
    text = generate_latest(registry).decode()
    scope = 'otel_scope_name="fleetforge",otel_scope_version'
    assert f'fleetforge_step_retries_total{{app="a",job="ff",{scope}="0.1"}} 5.0' in text
    assert f'fleetforge_queue_lag_seconds_bucket{{le="0.01",{scope}=""}} 1.0' in text
    assert (
        'fleetforge_queue_lag_seconds_count{otel_scope_name="fleetforge",otel_scope_version=""} 3.0' in text
    )
    now[0] += 301
    assert "fleetforge_step_retries_total" not in generate_latest(registry).decode()  # expired


def test_prometheus_name() -> None:
    assert prometheus_name("gen_ai.client.token.usage") == "gen_ai_client_token_usage"
    assert prometheus_name("1abc") == "_abc"
    assert KeyValue(key="x").key == "x"
