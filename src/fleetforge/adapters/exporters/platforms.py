"""The `Platform` seam (encode a batch of spans into one request) and the two OTLP platforms.

Phoenix: OTLP/HTTP `{PHOENIX_BASE_URL}/v1/traces`, OpenInference attributes, project from the
`openinference.project.name` resource attribute. Langfuse: OTLP/HTTP
`{LANGFUSE_BASE_URL}/api/public/otel/v1/traces`, `langfuse.*` attributes (ingestion version 4).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from fleetforge import __version__
from fleetforge.adapters.exporters import otlp
from fleetforge.adapters.exporters.delivery import Request
from fleetforge.adapters.exporters.settings import ExporterConfig
from fleetforge.core.exporting import SpanKind, TraceSpan

__all__ = ["LangfusePlatform", "PhoenixPlatform", "Platform", "langfuse_attributes", "phoenix_attributes"]

SERVICE_NAME: Final = "fleetforge"


class Platform(Protocol):
    """How one platform wants spans: one request per batch, plus optional set-up requests."""

    name: str

    def prepare(self) -> list[Request]:
        """Requests sent once before the first batch (may be empty)."""
        ...

    def encode(self, spans: Sequence[TraceSpan]) -> Request:
        """One request delivering `spans`."""
        ...

    def problem(self, body: bytes) -> str | None:
        """A warning about a 2xx answer (e.g. spans rejected in part), or None."""
        ...


class _Otlp:
    """Shared OTLP behaviour: resource, encoding and partial-success inspection."""

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
        body = otlp.encode(self.resource, ((s, self.attributes(s)) for s in spans))
        return Request(self.url, body, {"Content-Type": otlp.CONTENT_TYPE}, len(spans))

    def problem(self, body: bytes) -> str | None:
        count, message = otlp.rejected_spans(body)
        if count:
            return f"the platform rejected {count} spans of a batch ({message[:200] or 'no reason given'})"
        return None


# -- Phoenix (OpenInference) --------------------------------------------------------------------

_OI_KIND: Final = {SpanKind.RUN: "CHAIN", SpanKind.LLM: "LLM", SpanKind.TOOL: "TOOL", SpanKind.HTTP: "TOOL",
                   SpanKind.GUARDRAIL: "GUARDRAIL"}
_JSON: Final = "application/json"


def phoenix_attributes(span: TraceSpan) -> dict[str, Any]:
    """OpenInference attributes of one span."""
    attrs: dict[str, Any] = {
        "openinference.span.kind": _OI_KIND[span.kind],
        "input.value": otlp.json_text(span.inputs), "input.mime_type": _JSON,
        "output.value": otlp.json_text(span.outputs), "output.mime_type": _JSON,
        "metadata": otlp.json_text(span.metadata),
        "tag.tags": [span.workspace, span.app, str(span.kind)],
        **otlp.common_attributes(span),
    }
    if span.kind is SpanKind.LLM:
        attrs["llm.model_name"] = span.model
        if span.provider:
            attrs["llm.provider"] = span.provider.lower()
            attrs["llm.system"] = span.provider.lower()
    elif span.kind in (SpanKind.TOOL, SpanKind.HTTP):
        attrs["tool.name"] = span.tool or span.name
    u = span.usage
    if u is not None and span.kind is SpanKind.LLM:
        attrs["llm.token_count.prompt"] = u.input_tokens
        attrs["llm.token_count.completion"] = u.output_tokens
        attrs["llm.token_count.total"] = u.total_tokens
        if u.cached_tokens:
            attrs["llm.token_count.prompt_details.cache_read"] = u.cached_tokens
        attrs["llm.cost.total"] = u.cost_usd
    return attrs


class PhoenixPlatform(_Otlp):
    """Phoenix: OTLP/HTTP with OpenInference attributes."""

    name = "phoenix"
    path = "/v1/traces"

    def __init__(self, config: ExporterConfig) -> None:
        super().__init__(config)
        self.resource["openinference.project.name"] = config.options.get("project", "default")

    def attributes(self, span: TraceSpan) -> dict[str, Any]:
        return phoenix_attributes(span)


# -- Langfuse ----------------------------------------------------------------------------------

_LF_TYPE: Final = {SpanKind.RUN: "chain", SpanKind.LLM: "generation", SpanKind.TOOL: "tool",
                   SpanKind.HTTP: "tool", SpanKind.GUARDRAIL: "guardrail"}


_encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _meta_value(value: Any) -> str:
    """Langfuse metadata values are JSON-encoded, strings included (as its v5 SDKs send them)."""
    if type(value) is str:
        return _encode_str(value)
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    return otlp.json_text(value)


def langfuse_attributes(span: TraceSpan, environment: str | None = None) -> dict[str, Any]:
    """`langfuse.*` attributes of one span (trace-level ones on every span, as ingestion v4 expects)."""
    attrs: dict[str, Any] = {
        "langfuse.observation.type": _LF_TYPE[span.kind],
        "langfuse.observation.input": otlp.json_text(span.inputs),
        "langfuse.observation.output": otlp.json_text(span.outputs),
        "langfuse.trace.name": span.trace_name,
        "langfuse.trace.tags": [span.workspace, span.app],
        "langfuse.trace.metadata.run_id": _meta_value(span.run_id),
        "langfuse.trace.metadata.workspace": _meta_value(span.workspace),
        "langfuse.trace.metadata.app": _meta_value(span.app),
        **{f"langfuse.observation.metadata.{k}": _meta_value(v) for k, v in span.metadata.items()},
        **otlp.common_attributes(span),
    }
    if environment:
        attrs["langfuse.environment"] = environment
    if not span.ok:
        attrs["langfuse.observation.level"] = "ERROR"
        attrs["langfuse.observation.status_message"] = span.status_message
    elif span.kind is SpanKind.GUARDRAIL and span.outputs.get("effect") in ("deny", "modify"):
        attrs["langfuse.observation.level"] = "WARNING"
        attrs["langfuse.observation.status_message"] = str(span.outputs.get("reason", ""))
    if span.kind is SpanKind.LLM:
        attrs["langfuse.observation.model.name"] = span.model
    u = span.usage
    if u is not None and span.kind is SpanKind.LLM:
        usage = {"input": u.input_tokens, "output": u.output_tokens, "total": u.total_tokens}
        if u.cached_tokens:
            usage["input_cached_tokens"] = u.cached_tokens
        attrs["langfuse.observation.usage_details"] = otlp.json_text(usage)
        attrs["langfuse.observation.cost_details"] = otlp.json_text({"total": u.cost_usd})
    return attrs


class LangfusePlatform(_Otlp):
    """Langfuse: OTLP/HTTP with `langfuse.*` attributes."""

    name = "langfuse"
    path = "/api/public/otel/v1/traces"

    def __init__(self, config: ExporterConfig) -> None:
        super().__init__(config)
        self.environment = config.options.get("environment")

    def attributes(self, span: TraceSpan) -> dict[str, Any]:
        return langfuse_attributes(span, self.environment)

