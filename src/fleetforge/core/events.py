"""Build envelopes for run and step transitions, with the trace context every event carries."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fleetforge.core.agent import CALL_ID, PARENT
from fleetforge.core.ids import attempt_span_id, run_span_id
from fleetforge.domain.envelope import Envelope, TraceContext
from fleetforge.domain.models import RunRow, StepRow
from fleetforge.domain.names import RUN_KINDS, STEP_KINDS, EventKind

__all__ = ["run_event", "step_event"]


@lru_cache(maxsize=8192)
def _run_trace(trace_id: str, run_id: str) -> TraceContext:
    return TraceContext(trace_id, run_span_id(run_id))


@lru_cache(maxsize=16384)
def _attempt_trace(trace_id: str, run_id: str, step_id: str, attempt: int) -> TraceContext:
    """Shared by the events of one attempt (a frozen value; its span id is a hash worth keeping)."""
    return TraceContext(trace_id, attempt_span_id(run_id, step_id, attempt))


def run_event(kind: EventKind, run: RunRow, now_us: int, **payload: Any) -> Envelope:
    assert kind in RUN_KINDS, kind
    body = {"status": str(run.status), "slo_tier": run.slo_tier, **payload}
    return Envelope(kind=kind, occurred_us=now_us, run_id=run.id, workspace=run.workspace, app=run.app,
                    trace=_run_trace(run.trace_id, run.id), payload=body)


def step_event(kind: EventKind, run: RunRow, step: StepRow, attempt: int, now_us: int,
               **payload: Any) -> Envelope:
    assert kind in STEP_KINDS, kind
    body = {"step_type": str(step.type), "slo_tier": step.slo_tier}
    if step.spec and PARENT in step.spec:  # an agent's unit
        body.update(_agent_fields(kind, step))
    body.update(payload)
    return Envelope(kind=kind, occurred_us=now_us, run_id=run.id, step_id=step.step_id, attempt=attempt,
                    workspace=run.workspace, app=run.app,
                    trace=_attempt_trace(run.trace_id, run.id, step.step_id, attempt),
                    payload=body)


def _agent_fields(kind: EventKind, step: StepRow) -> dict[str, str]:
    """The optional fields of an agent's unit: `agent` (its agent step), a tool call's `call_id`, a denied
    or reused call's `tool`; none for the steps of the run spec."""
    spec = step.spec or {}
    parent = spec.get(PARENT)
    if not isinstance(parent, str):
        return {}
    fields = {"agent": parent}
    if kind is EventKind.TOOL_CALL and spec.get(CALL_ID):
        fields["call_id"] = str(spec[CALL_ID])
    elif kind in (EventKind.STEP_DENIED, EventKind.STEP_REUSED):
        inputs = spec.get("inputs")
        tool = inputs.get("tool") if isinstance(inputs, dict) else None
        if isinstance(tool, str) and tool:
            fields["tool"] = tool
    return fields
