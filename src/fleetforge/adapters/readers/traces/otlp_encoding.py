"""OTLP/HTTP protobuf encoding of canonical spans (opentelemetry-proto messages; no SDK providers)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from fleetforge import __version__
from fleetforge.adapters.readers.traces.delivery import Request
from fleetforge.adapters.readers.traces.platform_spec import ExporterConfig
from fleetforge.core.exporting import SpanKind, TraceSpan, genai_attributes
from fleetforge.domain.names import Attr

__all__ = ["CONTENT_TYPE", "SCOPE", "SERVICE_NAME", "OtlpPlatform", "common_attributes", "encode", "json_text",
           "rejected_spans"]

CONTENT_TYPE: Final = "application/x-protobuf"
SCOPE: Final = "fleetforge.exporters"
SERVICE_NAME: Final = "fleetforge"
_OTEL_KIND: Final = {
    SpanKind.RUN: Span.SPAN_KIND_INTERNAL,
    SpanKind.STEP: Span.SPAN_KIND_INTERNAL,
    SpanKind.LLM: Span.SPAN_KIND_CLIENT,
    SpanKind.TOOL: Span.SPAN_KIND_INTERNAL,
    SpanKind.HTTP: Span.SPAN_KIND_CLIENT,
    SpanKind.AGENT: Span.SPAN_KIND_INTERNAL,
    SpanKind.GUARDRAIL: Span.SPAN_KIND_INTERNAL,
}


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def json_text(value: Any) -> str:
    """Compact JSON, non-ASCII kept, anything unusual rendered with str()."""
    return _ENCODER.encode(value)


def _set(target: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list | tuple):
        array = target.array_value.values
        for v in value:
            _set(array.add(), v)
    else:
        target.string_value = json_text(value)


def _fill(kvs: Any, attrs: Mapping[str, Any]) -> None:
    """Append `attrs` (None values skipped) to a repeated KeyValue field, in place (fast with upb)."""
    add = kvs.add
    for k, v in attrs.items():
        if v is not None:
            _set(add(key=k).value, v)


def common_attributes(span: TraceSpan) -> dict[str, Any]:
    """FleetForge's own attributes, present on every exported span, and a unit span's OTel GenAI ones."""
    attrs: dict[str, Any] = {
        str(Attr.RUN_ID): span.run_id,
        str(Attr.WORKSPACE): span.workspace,
        str(Attr.APP): span.app,
    }
    if span.step_id is not None:
        attrs[str(Attr.STEP_ID)] = span.step_id
        attrs[str(Attr.ATTEMPT)] = span.attempt
    attrs.update(genai_attributes(span))
    return attrs


def _span(pb: Span, span: TraceSpan, attributes: Mapping[str, Any]) -> None:
    pb.trace_id = bytes.fromhex(span.trace_id)
    pb.span_id = bytes.fromhex(span.span_id)
    if span.parent_span_id:
        pb.parent_span_id = bytes.fromhex(span.parent_span_id)
    pb.flags = 0x101  # sampled; the parent (if any) is local
    pb.name = span.name
    pb.kind = _OTEL_KIND[span.kind]
    pb.start_time_unix_nano = span.start_us * 1000
    pb.end_time_unix_nano = span.end_us * 1000
    _fill(pb.attributes, attributes)
    if span.ok:
        pb.status.code = Status.STATUS_CODE_OK
        return
    pb.status.code = Status.STATUS_CODE_ERROR
    pb.status.message = span.status_message
    if span.status_message:
        event = pb.events.add(time_unix_nano=span.end_us * 1000, name="exception")
        _fill(event.attributes, {"exception.type": str(span.outputs.get("error_kind") or "error"),
                                 "exception.message": span.status_message})


def encode(resource: Mapping[str, Any], spans: Iterable[tuple[TraceSpan, Mapping[str, Any]]]) -> bytes:
    """One ExportTraceServiceRequest (serialized) with every span under one resource and scope."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _fill(rs.resource.attributes, resource)
    ss = rs.scope_spans.add(scope=InstrumentationScope(name=SCOPE, version=__version__))
    for span, attrs in spans:
        _span(ss.spans.add(), span, attrs)
    return bytes(req.SerializeToString())


def rejected_spans(body: bytes) -> tuple[int, str]:
    """(rejected span count, error message) from an OTLP response body; (0, "") when none or unparsable."""
    if not body:
        return 0, ""
    resp = ExportTraceServiceResponse()
    try:
        resp.ParseFromString(body)
    except Exception:  # a JSON or HTML body: not an OTLP answer to inspect
        return 0, ""
    return int(resp.partial_success.rejected_spans), resp.partial_success.error_message


def spans_of(body: bytes) -> Sequence[Span]:
    """Decode a request body back to spans (tests and diagnostics)."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


class OtlpPlatform:
    """The OTLP/HTTP platforms' shared behaviour: resource, encoding and partial-success inspection."""

    name = ""
    path = ""

    def __init__(self, config: ExporterConfig) -> None:
        self.config = config
        self.url = config.base_url + self.path
        self.resource: dict[str, Any] = {"service.name": SERVICE_NAME, "service.version": __version__}

    def prepare(self) -> list[Request]:
        return []

    def attributes(self, span: TraceSpan) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, spans: Sequence[TraceSpan]) -> Request:
        body = encode(self.resource, ((s, self.attributes(s)) for s in spans))
        return Request(self.url, body, {"Content-Type": CONTENT_TYPE}, len(spans))

    def problem(self, body: bytes) -> str | None:
        count, message = rejected_spans(body)
        if count:
            return f"the platform rejected {count} spans of a batch ({message[:200] or 'no reason given'})"
        return None
