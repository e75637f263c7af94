"""Turn a validated run spec into the rows a store keeps."""

from __future__ import annotations

from typing import Any

from fleetforge.core.gates import mark_dormant
from fleetforge.core.ids import new_run_id, new_trace_id
from fleetforge.domain.models import RunRow, RunSpec, RunStatus, StepRow, StepStatus

__all__ = ["build_run"]


def build_run(spec: RunSpec, spec_dict: dict[str, Any], now_us: int,
              run_id: str | None = None) -> tuple[RunRow, list[StepRow], list[tuple[str, str, str]]]:
    """Rows for a new run: steps without dependencies start queued, the others (and compensation steps) pending.

    The run's SLO tier and queue target are those of its tightest step (smallest queue target).
    """
    rid = run_id or new_run_id()
    tightest = min(spec.steps, key=lambda s: s.policy.slo.queue_target_ms).policy.slo
    run = RunRow(id=rid, workspace=spec.workspace, app=spec.app, status=RunStatus.QUEUED, spec=spec_dict,
                 seed=spec.seed, slo_tier=tightest.tier, queue_target_ms=tightest.queue_target_ms,
                 trace_id=new_trace_id(), created_us=now_us, labels=dict(spec.labels))
    steps: list[StepRow] = []
    deps: list[tuple[str, str, str]] = []
    for s in spec.steps:
        slo = s.policy.slo
        root = not s.depends_on
        steps.append(StepRow(
            run_id=rid, step_id=s.id, type=s.type, status=StepStatus.QUEUED if root else StepStatus.PENDING,
            spec={}, attempt=0, max_attempts=s.execution.max_attempts, deps_remaining=len(s.depends_on),
            due_us=now_us + (slo.queue_target_ms - slo.priority_boost) * 1000, ready_us=now_us,
            not_before_us=now_us, queue_target_ms=slo.queue_target_ms, priority_boost=slo.priority_boost,
            slo_tier=slo.tier))
        deps.extend((rid, s.id, d) for d in s.depends_on)
    mark_dormant(spec, steps)
    return run, steps, deps
