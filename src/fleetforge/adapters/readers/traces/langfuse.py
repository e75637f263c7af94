"""Langfuse: OTLP/HTTP `{LANGFUSE_BASE_URL}/api/public/otel/v1/traces` with `langfuse.*` attributes
(ingestion version 4)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from fleetforge.adapters.readers.traces import otlp_encoding
from fleetforge.adapters.readers.traces.platform_spec import Credentials, ExporterConfig, PlatformSpec, missing
from fleetforge.core.exporting import SpanKind, TraceSpan

__all__ = ["SPEC", "LangfusePlatform", "langfuse_attributes"]

_LF_TYPE: Final = {SpanKind.RUN: "chain", SpanKind.STEP: "span", SpanKind.LLM: "generation", SpanKind.TOOL: "tool",
                   SpanKind.HTTP: "tool", SpanKind.AGENT: "agent", SpanKind.GUARDRAIL: "guardrail"}


_encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _meta_value(value: Any) -> str:
    """Langfuse metadata values are JSON-encoded, strings included (as its v5 SDKs send them)."""
    if type(value) is str:
        return _encode_str(value)
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    return otlp_encoding.json_text(value)


def langfuse_attributes(span: TraceSpan, environment: str | None = None) -> dict[str, Any]:
    """`langfuse.*` attributes of one span (trace-level ones on every span, as ingestion v4 expects)."""
    attrs: dict[str, Any] = {
        "langfuse.observation.type": _LF_TYPE[span.kind],
        "langfuse.observation.input": otlp_encoding.json_text(span.inputs),
        "langfuse.observation.output": otlp_encoding.json_text(span.outputs),
        "langfuse.trace.name": span.trace_name,
        "langfuse.trace.tags": [span.workspace, span.app],
        "langfuse.trace.metadata.run_id": _meta_value(span.run_id),
        "langfuse.trace.metadata.workspace": _meta_value(span.workspace),
        "langfuse.trace.metadata.app": _meta_value(span.app),
        **{f"langfuse.observation.metadata.{k}": _meta_value(v) for k, v in span.metadata.items()},
        **otlp_encoding.common_attributes(span),
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
        attrs["langfuse.observation.usage_details"] = otlp_encoding.json_text(usage)
        attrs["langfuse.observation.cost_details"] = otlp_encoding.json_text({"total": u.cost_usd})
    return attrs


class LangfusePlatform(otlp_encoding.OtlpPlatform):
    """Langfuse: OTLP/HTTP with `langfuse.*` attributes."""

    name = "langfuse"
    path = "/api/public/otel/v1/traces"

    def __init__(self, config: ExporterConfig) -> None:
        super().__init__(config)
        self.environment = config.options.get("environment")

    def attributes(self, span: TraceSpan) -> dict[str, Any]:
        return langfuse_attributes(span, self.environment)


def _credentials(env: Mapping[str, str], options: dict[str, str], loopback: bool) -> Credentials | str:
    public, secret = env.get("LANGFUSE_PUBLIC_KEY", ""), env.get("LANGFUSE_SECRET_KEY", "")
    if not public or not secret:
        return missing(*[v for v, x in (("LANGFUSE_PUBLIC_KEY", public), ("LANGFUSE_SECRET_KEY", secret)) if not x])
    token = base64.b64encode(f"{public}:{secret}".encode()).decode("ascii")
    if env.get("LANGFUSE_TRACING_ENVIRONMENT"):
        options["environment"] = env["LANGFUSE_TRACING_ENVIRONMENT"]
    headers = {"Authorization": f"Basic {token}", "x-langfuse-ingestion-version": "4",
               "x-langfuse-public-key": public}
    return Credentials(headers, (secret, token))


SPEC: Final = PlatformSpec(
    name="langfuse", url_var="LANGFUSE_BASE_URL", default_url="https://cloud.langfuse.com",
    env=("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_TRACING_ENVIRONMENT"),
    options={"environment": str}, credentials=_credentials, encoder=LangfusePlatform,
)
