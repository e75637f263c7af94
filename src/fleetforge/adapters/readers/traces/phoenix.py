"""Phoenix: OTLP/HTTP `{PHOENIX_BASE_URL}/v1/traces` with OpenInference attributes; the project is the
`openinference.project.name` resource attribute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fleetforge.adapters.readers.traces import otlp_encoding
from fleetforge.adapters.readers.traces.platform_spec import Credentials, ExporterConfig, PlatformSpec, missing
from fleetforge.core.exporting import SpanKind, TraceSpan

__all__ = ["SPEC", "PhoenixPlatform", "phoenix_attributes"]

_OI_KIND: Final = {SpanKind.RUN: "CHAIN", SpanKind.STEP: "CHAIN", SpanKind.LLM: "LLM", SpanKind.TOOL: "TOOL",
                   SpanKind.HTTP: "TOOL", SpanKind.AGENT: "AGENT", SpanKind.GUARDRAIL: "GUARDRAIL"}
_JSON: Final = "application/json"


def phoenix_attributes(span: TraceSpan) -> dict[str, Any]:
    """OpenInference attributes of one span."""
    attrs: dict[str, Any] = {
        "openinference.span.kind": _OI_KIND[span.kind],
        "input.value": otlp_encoding.json_text(span.inputs), "input.mime_type": _JSON,
        "output.value": otlp_encoding.json_text(span.outputs), "output.mime_type": _JSON,
        "metadata": otlp_encoding.json_text(span.metadata),
        "tag.tags": [span.workspace, span.app, str(span.kind)],
        **otlp_encoding.common_attributes(span),
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


class PhoenixPlatform(otlp_encoding.OtlpPlatform):
    """Phoenix: OTLP/HTTP with OpenInference attributes."""

    name = "phoenix"
    path = "/v1/traces"

    def __init__(self, config: ExporterConfig) -> None:
        super().__init__(config)
        self.resource["openinference.project.name"] = config.options.get("project", "default")

    def attributes(self, span: TraceSpan) -> dict[str, Any]:
        return phoenix_attributes(span)


def _credentials(env: Mapping[str, str], options: dict[str, str], loopback: bool) -> Credentials | str:
    key = env.get("PHOENIX_API_KEY", "")
    if not key and not loopback:  # a Phoenix on a loopback address may run without authentication
        return missing("PHOENIX_API_KEY")
    options["project"] = env.get("PHOENIX_WORKSPACE") or options.get("project") or "default"
    if not key:
        return Credentials({}, ())
    return Credentials({"Authorization": f"Bearer {key}", "api_key": key}, (key,))


SPEC: Final = PlatformSpec(
    name="phoenix", url_var="PHOENIX_BASE_URL", default_url="https://app.phoenix.arize.com",
    env=("PHOENIX_API_KEY", "PHOENIX_BASE_URL", "PHOENIX_WORKSPACE"), options={"project": str},
    credentials=_credentials, encoder=PhoenixPlatform,
)
