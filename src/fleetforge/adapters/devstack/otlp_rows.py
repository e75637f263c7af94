"""OTLP export requests (protobuf messages) as rows of the OpenTelemetry Collector ClickHouse exporter's
tables: the same column values the exporter writes (hex ids, "Server"/"Client" span kinds, "Ok"/"Error"
status codes, attribute values as strings, service name from the resource's service.name).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from typing import Any, Final

from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["ID_FIELDS", "Row", "any_text", "log_rows", "metric_rows", "ns_text", "parse_json", "span_rows"]

Row = dict[str, Any]
ID_FIELDS: Final = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_SPAN_KINDS: Final = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
_STATUS: Final = ("Unset", "Ok", "Error")


def ns_text(ns: int) -> str:
    """Unix nanoseconds as `YYYY-MM-DD hh:mm:ss.nnnnnnnnn` (UTC)."""
    seconds, frac = divmod(max(0, int(ns)), 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{frac:09d}"


def any_text(value: Any) -> str:
    """An AnyValue as the exporter stores it: strings as they are, others in their text or JSON form."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value)
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "int_value":
        return str(value.int_value)
    if which == "double_value":
        return repr(float(value.double_value))
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if which in ("array_value", "kvlist_value"):
        return json.dumps(_plain(value), separators=(",", ":"))
    return ""


def _plain(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which) if which else None


def _attrs(kvs: Iterable[Any]) -> dict[str, str]:
    return {kv.key: any_text(kv.value) for kv in kvs}


def _service(resource_attrs: dict[str, str]) -> str:
    return resource_attrs.get("service.name", "")


def span_rows(req: ExportTraceServiceRequest) -> Iterator[Row]:
    """otel_traces rows."""
    for rs in req.resource_spans:
        res = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield {
                    "Timestamp": ns_text(span.start_time_unix_nano),
                    "TraceId": span.trace_id.hex(),
                    "SpanId": span.span_id.hex(),
                    "ParentSpanId": span.parent_span_id.hex(),
                    "TraceState": span.trace_state,
                    "SpanName": span.name,
                    "SpanKind": _SPAN_KINDS[span.kind]
                    if 0 <= span.kind < len(_SPAN_KINDS)
                    else "Unspecified",
                    "ServiceName": _service(res),
                    "ResourceAttributes": res,
                    "ScopeName": ss.scope.name,
                    "ScopeVersion": ss.scope.version,
                    "SpanAttributes": _attrs(span.attributes),
                    "Duration": max(0, span.end_time_unix_nano - span.start_time_unix_nano),
                    "StatusCode": _STATUS[span.status.code] if 0 <= span.status.code < 3 else "Unset",
                    "StatusMessage": span.status.message,
                    "Events.Timestamp": [ns_text(e.time_unix_nano) for e in span.events],
                    "Events.Name": [e.name for e in span.events],
                    "Events.Attributes": [_attrs(e.attributes) for e in span.events],
                    "Links.TraceId": [link.trace_id.hex() for link in span.links],
                    "Links.SpanId": [link.span_id.hex() for link in span.links],
                    "Links.TraceState": [link.trace_state for link in span.links],
                    "Links.Attributes": [_attrs(link.attributes) for link in span.links],
                }


def log_rows(req: ExportLogsServiceRequest) -> Iterator[Row]:
    """otel_logs rows."""
    for rl in req.resource_logs:
        res = _attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                yield {
                    "Timestamp": ns_text(rec.time_unix_nano or rec.observed_time_unix_nano),
                    "TraceId": rec.trace_id.hex(),
                    "SpanId": rec.span_id.hex(),
                    "TraceFlags": rec.flags & 0xFF,
                    "SeverityText": rec.severity_text,
                    "SeverityNumber": int(rec.severity_number),
                    "ServiceName": _service(res),
                    "Body": any_text(rec.body),
                    "ResourceSchemaUrl": rl.schema_url,
                    "ResourceAttributes": res,
                    "ScopeSchemaUrl": sl.schema_url,
                    "ScopeName": sl.scope.name,
                    "ScopeVersion": sl.scope.version,
                    "ScopeAttributes": _attrs(sl.scope.attributes),
                    "LogAttributes": _attrs(rec.attributes),
                    "EventName": getattr(rec, "event_name", ""),
                }


def _exemplars(points: Any) -> Row:
    ex = list(points.exemplars)
    return {
        "Exemplars.FilteredAttributes": [_attrs(e.filtered_attributes) for e in ex],
        "Exemplars.TimeUnix": [ns_text(e.time_unix_nano) for e in ex],
        "Exemplars.Value": [
            e.as_double if e.WhichOneof("value") == "as_double" else float(e.as_int) for e in ex
        ],
        "Exemplars.SpanId": [e.span_id.hex() for e in ex],
        "Exemplars.TraceId": [e.trace_id.hex() for e in ex],
    }


def _number(point: Any) -> float:
    return float(point.as_double) if point.WhichOneof("value") == "as_double" else float(point.as_int)


def metric_rows(req: ExportMetricsServiceRequest) -> Iterator[tuple[str, Row]]:
    """(table, row) for every data point: otel_metrics_gauge, _sum, _histogram, _exp_histogram, _summary."""
    for rm in req.resource_metrics:
        res = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = {
                "ResourceAttributes": res,
                "ResourceSchemaUrl": rm.schema_url,
                "ScopeName": sm.scope.name,
                "ScopeVersion": sm.scope.version,
                "ScopeAttributes": _attrs(sm.scope.attributes),
                "ScopeDroppedAttrCount": sm.scope.dropped_attributes_count,
                "ScopeSchemaUrl": sm.schema_url,
                "ServiceName": _service(res),
            }
            for metric in sm.metrics:
                head = {
                    **scope,
                    "MetricName": metric.name,
                    "MetricDescription": metric.description,
                    "MetricUnit": metric.unit,
                }
                yield from _metric(metric, head)


def _point_head(head: Row, p: Any) -> Row:
    return {
        **head,
        "Attributes": _attrs(p.attributes),
        "StartTimeUnix": ns_text(p.start_time_unix_nano),
        "TimeUnix": ns_text(p.time_unix_nano),
        "Flags": p.flags,
        **_exemplars(p),
    }


def _metric(metric: Any, head: Row) -> Iterator[tuple[str, Row]]:
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        for p in metric.gauge.data_points:
            yield "otel_metrics_gauge", {**_point_head(head, p), "Value": _number(p)}
    elif kind == "sum":
        for p in metric.sum.data_points:
            yield (
                "otel_metrics_sum",
                {
                    **_point_head(head, p),
                    "Value": _number(p),
                    "AggregationTemporality": int(metric.sum.aggregation_temporality),
                    "IsMonotonic": bool(metric.sum.is_monotonic),
                },
            )
    elif kind == "histogram":
        for p in metric.histogram.data_points:
            yield (
                "otel_metrics_histogram",
                {
                    **_point_head(head, p),
                    "Count": p.count,
                    "Sum": p.sum,
                    "BucketCounts": list(p.bucket_counts),
                    "ExplicitBounds": list(p.explicit_bounds),
                    "Min": p.min,
                    "Max": p.max,
                    "AggregationTemporality": int(metric.histogram.aggregation_temporality),
                },
            )
    elif kind == "exponential_histogram":
        for p in metric.exponential_histogram.data_points:
            yield (
                "otel_metrics_exp_histogram",
                {
                    **_point_head(head, p),
                    "Count": p.count,
                    "Sum": p.sum,
                    "Scale": p.scale,
                    "ZeroCount": p.zero_count,
                    "PositiveOffset": p.positive.offset,
                    "PositiveBucketCounts": list(p.positive.bucket_counts),
                    "NegativeOffset": p.negative.offset,
                    "NegativeBucketCounts": list(p.negative.bucket_counts),
                    "Min": p.min,
                    "Max": p.max,
                    "AggregationTemporality": int(metric.exponential_histogram.aggregation_temporality),
                },
            )
    elif kind == "summary":
        for p in metric.summary.data_points:
            row = {
                **head,
                "Attributes": _attrs(p.attributes),
                "StartTimeUnix": ns_text(p.start_time_unix_nano),
                "TimeUnix": ns_text(p.time_unix_nano),
                "Flags": p.flags,
                "Count": p.count,
                "Sum": p.sum,
                "ValueAtQuantiles.Quantile": [q.quantile for q in p.quantile_values],
                "ValueAtQuantiles.Value": [q.value for q in p.quantile_values],
            }
            yield "otel_metrics_summary", row


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping reads bytes as base64."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ID_FIELDS and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = base64.b64encode(bytes.fromhex(value)).decode()
            out[key] = _hex_ids_to_base64(value)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def parse_json(body: bytes, message: Any) -> Any:
    """Parse an OTLP/JSON body into `message` (a fresh request message); ValueError when malformed."""
    try:
        doc = json.loads(body or b"{}")
        json_format.ParseDict(_hex_ids_to_base64(doc), message, ignore_unknown_fields=True)
    except (json.JSONDecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed OTLP/JSON: {exc}") from None
    return message
