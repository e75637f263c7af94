"""Turns committed outbox envelopes into spans whose trace and span ids are the events' own.

A run span (root, id `run_span_id(run_id)`) and one span per step attempt (child of the run span, id
`attempt_span_id(run_id, step_id, attempt)`) carry the timestamps of the events; tool and http
attempts get a child tool span; policy decisions and scheduled retries are span events; budget
reservations and settlements are attempt attributes. The SDK makes the spans: an `EventIdGenerator` in
the TracerProvider hands it the wanted ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from fleetforge.core.ids import run_span_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.names import TERMINAL_ATTEMPT_KINDS, Attr
from fleetforge.domain.names import EventKind as K

__all__ = ["RUN_SPAN", "STEP_SPAN", "TRACER_NAME", "EventIdGenerator", "SpanRecorder", "tool_span_id"]

log = logging.getLogger("fleetforge.telemetry")

TRACER_NAME: Final = "fleetforge.events"
RUN_SPAN: Final = "fleetforge.run"
STEP_SPAN: Final = "step {step_id}"  # tool/http attempts; LLM attempts are "chat {model}" (GenAI conventions)
MAX_OPEN_ATTEMPTS: Final = 65_536
_ATTEMPT_KINDS: Final = frozenset({K.POLICY_DECISION, K.BUDGET_RESERVED, K.STEP_STARTED, K.BUDGET_RECONCILED,
                                   K.TOOL_CALL, K.STEP_RETRY_SCHEDULED}) | TERMINAL_ATTEMPT_KINDS
_RUN_TERMINAL: Final = frozenset({K.RUN_SUCCEEDED, K.RUN_FAILED, K.RUN_CANCELED})
_COMMON: Final = frozenset({"step_type", "slo_tier"})
_SPAN_EVENTS: Final = frozenset({K.POLICY_DECISION, K.STEP_RETRY_SCHEDULED})  # the rest become attributes
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)

# Plain str keys (a StrEnum key would show as Attr.X in some exporters' output).
_APP: Final = str(Attr.APP)
_ATTEMPT: Final = str(Attr.ATTEMPT)
_ERROR_KIND: Final = str(Attr.ERROR_KIND)
_BUDGET_TOKENS_RESERVED: Final = str(Attr.BUDGET_TOKENS_RESERVED)
_BUDGET_TOKENS_LEFT: Final = str(Attr.BUDGET_TOKENS_LEFT)
_GENAI_INPUT_TOKENS: Final = str(Attr.GENAI_INPUT_TOKENS)
_GENAI_MODEL: Final = str(Attr.GENAI_MODEL)
_GENAI_OPERATION: Final = str(Attr.GENAI_OPERATION)
_GENAI_OUTPUT_TOKENS: Final = str(Attr.GENAI_OUTPUT_TOKENS)
_GENAI_PROVIDER: Final = str(Attr.GENAI_PROVIDER)
_GENAI_TOOL_NAME: Final = str(Attr.GENAI_TOOL_NAME)
_RUN_ID: Final = str(Attr.RUN_ID)
_SLO_TIER: Final = str(Attr.SLO_TIER)
_STATUS: Final = str(Attr.STATUS)
_STEP_ID: Final = str(Attr.STEP_ID)
_STEP_TYPE: Final = str(Attr.STEP_TYPE)
_TOOL_PROVIDER: Final = str(Attr.TOOL_PROVIDER)
_WORKER: Final = str(Attr.WORKER)
_WORKSPACE: Final = str(Attr.WORKSPACE)


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


def tool_span_id(attempt_span_hex: str) -> str:
    """The tool span's id: 16 hex digits derived from its attempt span id (so replays agree)."""
    return hashlib.sha256(f"{attempt_span_hex}\x00tool".encode()).hexdigest()[:16]


def _scalar(value: Any) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _ns(us: int) -> int:
    return us * 1000


@dataclass(slots=True)
class _Attempt:
    """What is known of one attempt until its terminal event."""

    events: list[Envelope] = field(default_factory=list)
    started: Envelope | None = None
    terminal: Envelope | None = None
    tool_call: Envelope | None = None


class SpanRecorder:
    """Builds spans from events through `provider`, whose id generator must be an `EventIdGenerator`."""

    def __init__(self, provider: TracerProvider, *, max_open: int = MAX_OPEN_ATTEMPTS) -> None:
        ids = getattr(provider, "id_generator", None)
        if not isinstance(ids, EventIdGenerator):
            raise ConfigError("the TracerProvider must be built with id_generator=EventIdGenerator() "
                              "(from fleetforge.adapters.otel) so spans carry the events' trace and span ids")
        self._ids = ids
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._open: OrderedDict[tuple[str, str, int], _Attempt] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()

    @property
    def open_attempts(self) -> int:
        """Attempts seen without their terminal event yet."""
        return len(self._open)

    def record(self, events: Sequence[Envelope]) -> None:
        """Add the events; emit the spans of every attempt and run they finish."""
        with self._lock:
            finished: list[_Attempt] = []
            for e in events:
                if e.kind in _RUN_TERMINAL:
                    finished.append(_Attempt(terminal=e))
                elif e.kind in _ATTEMPT_KINDS and e.step_id is not None and e.attempt > 0:
                    a = self._attempt(e, finished)
                    if a is not None:
                        a.events.append(e)
            for a in finished:
                assert a.terminal is not None
                if a.terminal.kind in _RUN_TERMINAL:
                    self._run_span(a.terminal)
                else:
                    self._attempt_span(a)

    def _attempt(self, e: Envelope, finished: list[_Attempt]) -> _Attempt | None:
        assert e.step_id is not None
        key = (e.run_id, e.step_id, e.attempt)
        if e.kind is K.STEP_RETRY_SCHEDULED:  # follows the failure of its attempt in the same batch
            return next((a for a in finished if a.terminal is not None and a.terminal.run_id == e.run_id
                         and a.terminal.step_id == e.step_id and a.terminal.attempt == e.attempt), None)
        a = self._open.get(key)
        if a is None:
            a = self._open[key] = _Attempt()
            if len(self._open) > self._max_open:
                lost = self._open.popitem(last=False)[0]
                log.warning("span of attempt %s/%s#%d dropped: more than %d attempts open", *lost, self._max_open)
        if e.kind is K.STEP_STARTED:
            a.started = e
        elif e.kind is K.TOOL_CALL:
            a.tool_call = e
        elif e.kind in TERMINAL_ATTEMPT_KINDS:
            a.terminal = e
            del self._open[key]
            finished.append(a)
        return a

    # -- spans --------------------------------------------------------------------------------

    def _start(self, name: str, trace_hex: str, span_hex: str, parent_hex: str | None, kind: SpanKind,
               start_us: int, attrs: dict[str, AttributeValue]) -> trace.Span:
        if parent_hex is None:
            ctx = otel_context.Context()
        else:
            parent = SpanContext(int(trace_hex, 16), int(parent_hex, 16), is_remote=False, trace_flags=_SAMPLED)
            ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
        with self._ids.preset(int(trace_hex, 16), int(span_hex, 16)):
            return self._tracer.start_span(name, context=ctx, kind=kind, attributes=attrs,
                                           start_time=_ns(start_us))

    def _run_span(self, e: Envelope) -> None:
        p = e.payload
        end_us = e.occurred_us
        start_us = end_us - round(float(p.get("duration_ms", 0.0)) * 1000)
        attrs: dict[str, AttributeValue] = {
            _RUN_ID: e.run_id, _WORKSPACE: e.workspace, _APP: e.app,
            _SLO_TIER: p.get("slo_tier", ""), _STATUS: p.get("status", ""),
        }
        span = self._start(RUN_SPAN, e.trace.trace_id, e.trace.span_id, None, SpanKind.INTERNAL, start_us, attrs)
        if e.kind is K.RUN_FAILED:
            span.set_attribute(_ERROR_KIND, p.get("error_kind", ""))
            span.set_status(Status(StatusCode.ERROR, p.get("error_kind", "")))
        span.end(end_time=_ns(end_us))

    def _attempt_span(self, a: _Attempt) -> None:
        end = a.terminal
        assert end is not None and end.step_id is not None
        p = end.payload
        first = a.started or (a.events[0] if a.events else end)
        start_us = first.occurred_us
        end_us = end.occurred_us
        if a.started is not None and "duration_ms" in p:
            end_us = start_us + round(float(p["duration_ms"]) * 1000)
        step_type = p.get("step_type", "")
        attrs: dict[str, AttributeValue] = {
            _RUN_ID: end.run_id, _STEP_ID: end.step_id, _ATTEMPT: end.attempt,
            _WORKSPACE: end.workspace, _APP: end.app, _STEP_TYPE: step_type,
            _SLO_TIER: p.get("slo_tier", ""), _STATUS: end.kind.removeprefix("step_"),
        }
        if a.started is not None:
            attrs[_WORKER] = a.started.payload.get("worker", "")
        name, kind = STEP_SPAN.format(step_id=end.step_id), SpanKind.INTERNAL
        if step_type == "llm":
            model = p.get("model") or p.get("tool") or ""
            name, kind = (f"chat {model}" if model else "chat"), SpanKind.CLIENT
            attrs[_GENAI_OPERATION] = "chat"
            if p.get("provider"):
                attrs[_GENAI_PROVIDER] = p["provider"]
            if model:
                attrs[_GENAI_MODEL] = model
            if end.kind is K.STEP_SUCCEEDED:
                attrs[_GENAI_INPUT_TOKENS] = int(p.get("input_tokens", 0))
                attrs[_GENAI_OUTPUT_TOKENS] = int(p.get("output_tokens", 0))
        for e in a.events:
            if e.kind is K.BUDGET_RESERVED and e.payload.get("tokens_limit"):
                attrs[_BUDGET_TOKENS_RESERVED] = int(e.payload.get("tokens", 0))
            elif e.kind is K.BUDGET_RECONCILED and e.payload.get("tokens_limit"):
                attrs[_BUDGET_TOKENS_LEFT] = int(e.payload.get("tokens_remaining", 0))
        span = self._start(name, end.trace.trace_id, end.trace.span_id, run_span_id(end.run_id), kind,
                           start_us, attrs)
        for e in a.events:
            if e.kind in _SPAN_EVENTS:
                span.add_event(str(e.kind), {k: _scalar(v) for k, v in e.payload.items() if k not in _COMMON},
                               timestamp=_ns(e.occurred_us))
        if end.kind is not K.STEP_SUCCEEDED:
            error_kind = p.get("error_kind", "")
            span.set_attribute(_ERROR_KIND, error_kind)
            span.set_status(Status(StatusCode.ERROR, str(p.get("error") or p.get("reason") or error_kind)[:500]))
        if a.tool_call is not None:
            self._tool_span(a.tool_call, end_us)
        span.end(end_time=_ns(end_us))

    def _tool_span(self, e: Envelope, end_us: int) -> None:
        p = e.payload
        tool = str(p.get("tool", ""))
        attrs: dict[str, AttributeValue] = {
            _GENAI_OPERATION: "execute_tool", _GENAI_TOOL_NAME: tool,
            _TOOL_PROVIDER: p.get("provider", ""), _RUN_ID: e.run_id, _STEP_ID: e.step_id or "",
            _ATTEMPT: e.attempt,
        }
        kind = SpanKind.CLIENT if p.get("step_type") == "http" else SpanKind.INTERNAL
        start_us = end_us - round(float(p.get("latency_ms", 0.0)) * 1000)
        span = self._start(f"execute_tool {tool}", e.trace.trace_id, tool_span_id(e.trace.span_id),
                           e.trace.span_id, kind, start_us, attrs)
        if not p.get("ok", True):
            span.set_attribute(_ERROR_KIND, p.get("error_kind", ""))
            span.set_status(Status(StatusCode.ERROR, str(p.get("error_kind", ""))))
        span.end(end_time=_ns(end_us))
