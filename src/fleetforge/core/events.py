"""Build envelopes for run and step transitions, with the trace context every event carries."""

from __future__ import annotations

from typing import Any

from fleetforge.core.ids import attempt_span_id, run_span_id
from fleetforge.domain.envelope import Envelope, TraceContext
from fleetforge.domain.models import RunRow, StepRow
from fleetforge.domain.names import CATALOG, EventKind

__all__ = ["run_event", "step_event"]


def run_event(kind: EventKind, run: RunRow, now_us: int, **payload: Any) -> Envelope:
    assert CATALOG[kind].scope == "run", kind
    body = {"status": str(run.status), "slo_tier": run.slo_tier, **payload}
    return Envelope(kind=kind, occurred_us=now_us, run_id=run.id, workspace=run.workspace, app=run.app,
                    trace=TraceContext(run.trace_id, run_span_id(run.id)), payload=body)


def step_event(kind: EventKind, run: RunRow, step: StepRow, attempt: int, now_us: int,
               **payload: Any) -> Envelope:
    assert CATALOG[kind].scope == "step", kind
    body = {"step_type": str(step.type), "slo_tier": step.slo_tier, **payload}
    return Envelope(kind=kind, occurred_us=now_us, run_id=run.id, step_id=step.step_id, attempt=attempt,
                    workspace=run.workspace, app=run.app,
                    trace=TraceContext(run.trace_id, attempt_span_id(run.id, step.step_id, attempt)),
                    payload=body)
