"""Renders the one span model (core/exporting) onto an OpenTelemetry SDK tracer.

The spans are those every trace backend gets: run -> step attempt -> llm | tool | http unit, with policy
decisions as zero-length guardrail spans under their attempt; same ids (the events' own), same start
and end times. Attributes follow the GenAI conventions where they apply (`chat {model}`,
`execute_tool {tool}`); budget reservations and settlements are attempt attributes. The SDK makes the
spans: an `EventIdGenerator` in the TracerProvider hands it the wanted ids.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from fleetforge.core.exporting import SpanKind as Kind
from fleetforge.core.exporting import TraceAssembler, TraceSpan, genai_attributes, unit_span_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.names import Attr

__all__ = ["TRACER_NAME", "EventIdGenerator", "SpanRecorder", "otel_attributes", "tool_span_id"]

log = logging.getLogger("fleetforge.telemetry")

TRACER_NAME: Final = "fleetforge.events"
MAX_OPEN_ATTEMPTS: Final = 1_000  # per open run
_OTEL_KIND: Final = {Kind.LLM: SpanKind.CLIENT, Kind.HTTP: SpanKind.CLIENT}  # the rest are INTERNAL
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)

# Plain str keys (a StrEnum key would show as Attr.X in some exporters' output).
_APP: Final = str(Attr.APP)
_ATTEMPT: Final = str(Attr.ATTEMPT)
_ERROR_KIND: Final = str(Attr.ERROR_KIND)
_BUDGET_TOKENS_RESERVED: Final = str(Attr.BUDGET_TOKENS_RESERVED)
_BUDGET_TOKENS_LEFT: Final = str(Attr.BUDGET_TOKENS_LEFT)
_GENAI_INPUT_TOKENS: Final = str(Attr.GENAI_INPUT_TOKENS)
_GENAI_OUTPUT_TOKENS: Final = str(Attr.GENAI_OUTPUT_TOKENS)
_GENAI_PROVIDER: Final = str(Attr.GENAI_PROVIDER)
_RUN_ID: Final = str(Attr.RUN_ID)
_SLO_TIER: Final = str(Attr.SLO_TIER)
_STATUS: Final = str(Attr.STATUS)
_STEP_ID: Final = str(Attr.STEP_ID)
_STEP_TYPE: Final = str(Attr.STEP_TYPE)
_TOOL_PROVIDER: Final = str(Attr.TOOL_PROVIDER)
_WORKER: Final = str(Attr.WORKER)
_WORKSPACE: Final = str(Attr.WORKSPACE)
_SPAN_KIND: Final = str(Attr.SPAN_KIND)


class EventIdGenerator(IdGenerator):
    """Random ids, except inside `preset(trace_id, span_id)`, where the SDK gets exactly those.

    Build the TracerProvider with it (`TracerProvider(id_generator=EventIdGenerator())`); other tracers of
    the same provider keep getting random ids.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._local = threading.local()

    @contextmanager
    def preset(self, trace_id: int, span_id: int) -> Iterator[None]:
        self._local.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._local.ids = None

    def generate_span_id(self) -> int:
        ids: tuple[int, int] | None = getattr(self._local, "ids", None)
        return ids[1] if ids else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        ids: tuple[int, int] | None = getattr(self._local, "ids", None)
        return ids[0] if ids else self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True  # core/ids.new_trace_id draws 128 random bits


tool_span_id: Final = unit_span_id  # the unit span of a tool or http attempt (an older name)


def _scalar(value: Any) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _ns(us: int) -> int:
    return us * 1000


def otel_attributes(span: TraceSpan) -> dict[str, AttributeValue]:
    """The OpenTelemetry attributes of one span of the model (GenAI conventions where they apply)."""
    meta = span.metadata
    attrs: dict[str, AttributeValue] = {_RUN_ID: span.run_id, _WORKSPACE: span.workspace, _APP: span.app,
                                        _SPAN_KIND: str(span.kind)}
    if span.step_id is not None:
        attrs[_STEP_ID] = span.step_id
        attrs[_ATTEMPT] = span.attempt
    kind = span.kind
    if kind is Kind.RUN or kind is Kind.STEP:
        attrs[_SLO_TIER] = str(meta.get("slo_tier", ""))
        attrs[_STATUS] = str(span.outputs.get("status", ""))
    if kind is Kind.STEP:
        attrs[_STEP_TYPE] = str(meta.get("step_type", ""))
        if "worker" in meta:
            attrs[_WORKER] = str(meta["worker"])
        if meta.get("tokens_limit"):
            attrs[_BUDGET_TOKENS_RESERVED] = int(span.inputs.get("tokens_reserved", 0))
            attrs[_BUDGET_TOKENS_LEFT] = int(meta.get("tokens_remaining", 0))
        if "final" in meta:
            attrs[str(Attr.FINAL)] = bool(meta["final"])
    elif kind is Kind.LLM:
        attrs.update(genai_attributes(span))
        if span.provider:
            attrs[_GENAI_PROVIDER] = span.provider
        if span.usage is not None:
            attrs[_GENAI_INPUT_TOKENS] = span.usage.input_tokens
            attrs[_GENAI_OUTPUT_TOKENS] = span.usage.output_tokens
    elif kind is Kind.GUARDRAIL:
        for key in (Attr.PACK, Attr.HOOK):
            attrs[str(key)] = str(span.inputs.get(key, ""))
        for key in (Attr.EFFECT, Attr.REASON, Attr.RAW):
            value = span.outputs.get(key)
            attrs[str(key)] = _scalar(value if value is not None else "")
    elif kind is Kind.AGENT:
        attrs.update(genai_attributes(span))
    elif kind is not Kind.RUN:  # tool and http units
        attrs.update(genai_attributes(span))
        attrs[_TOOL_PROVIDER] = span.provider
    if not span.ok:
        attrs[_ERROR_KIND] = str(meta.get("error_kind", ""))
    return attrs
class SpanRecorder:
    """Feeds events to the one span model and renders every span it completes through `provider`.

    The provider's id generator must be an `EventIdGenerator`. `run_start(run_id)` gives a run's
    creation time when its submission event is not among the events recorded (as in TraceAssembler).
    """

    def __init__(self, provider: TracerProvider, *, max_open: int = MAX_OPEN_ATTEMPTS,
                 run_start: Callable[[str], int | None] | None = None) -> None:
        ids = getattr(provider, "id_generator", None)
        if not isinstance(ids, EventIdGenerator):
            raise ConfigError("the TracerProvider must be built with id_generator=EventIdGenerator() "
                              "(from fleetforge.adapters.readers.telemetry) so spans carry the events' trace and span "
                              "ids")
        self._ids = ids
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._max_open = max_open
        self._assembler = TraceAssembler(max_attempts=max_open, run_start=run_start)
        self._lock = threading.Lock()

    @property
    def open_attempts(self) -> int:
        """Attempts seen without their terminal event yet."""
        return self._assembler.open_attempts

    def record(self, events: Sequence[Envelope]) -> None:
        """Add the events; emit the spans of every attempt and run they finish."""
        with self._lock:
            dropped = self._assembler.stats.dropped_attempts
            for e in events:
                for span in self._assembler.feed(e):
                    self._render(span)
            lost = self._assembler.stats.dropped_attempts - dropped
            if lost:
                log.warning("spans of %d attempts dropped: more than %d attempts open in a run", lost,
                            self._max_open)

    def _render(self, span: TraceSpan) -> None:
        trace_id = int(span.trace_id, 16)
        if span.parent_span_id is None:
            ctx = otel_context.Context()
        else:
            parent = SpanContext(trace_id, int(span.parent_span_id, 16), is_remote=False, trace_flags=_SAMPLED)
            ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
        with self._ids.preset(trace_id, int(span.span_id, 16)):
            out = self._tracer.start_span(span.name, context=ctx, kind=_OTEL_KIND.get(span.kind, SpanKind.INTERNAL),
                                          attributes=otel_attributes(span), start_time=_ns(span.start_us))
        if not span.ok:
            out.set_status(Status(StatusCode.ERROR, span.status_message[:500]))
            if span.status_message:
                out.add_event("exception", {"exception.type": str(span.metadata.get("error_kind") or "error"),
                                            "exception.message": span.status_message}, timestamp=_ns(span.end_us))
        out.end(end_time=_ns(span.end_us))
