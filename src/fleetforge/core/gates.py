"""What stops a ready step from starting, and what a failure for good queues (docs/runtime.md,
"Operators in control").

Scheduler hooks, each inside the scheduler's transaction: `gate` holds a step of a paused run, pauses
the run at a breakpoint and asks for approval; `answer` records a person's answer (or a timeout);
`expire` times out the waits past their deadline; the compensation helpers queue the compensation
step of a step that failed for good. A step row keeps what these need under `spec["control"]`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from fleetforge.core import agent as A
from fleetforge.core import claiming, completion
from fleetforge.core.batch import Batch
from fleetforge.core.events import run_event, step_event
from fleetforge.core.policies.pii import redact_pii
from fleetforge.domain.models import ApprovalSpec, ErrorKind, RunRow, RunSpec, RunStatus, StepRow, StepStatus
from fleetforge.domain.names import HUMAN_APPROVAL_PACK
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.policy import Effect, Hook
from fleetforge.ports.store import AttemptRow, DecisionRow, Tx

if TYPE_CHECKING:
    from fleetforge.core.scheduler import Scheduler

__all__ = [
    "CONTROL",
    "answer",
    "approval_of",
    "compensating",
    "control",
    "dormant",
    "errors_of",
    "expire",
    "gate",
    "mark_dormant",
    "on_failed",
    "patched",
    "set_control",
    "start_compensations",
]

CONTROL: Final = "control"
"""Key of a step row's spec holding its operator state (approval, breakpoint, patch, compensation)."""
_REASON_CHARS: Final = 500


def control(step: StepRow) -> dict[str, Any]:
    """A copy of the step's operator state ({} when it has none)."""
    found = step.spec.get(CONTROL) if step.spec else None
    return dict(found) if isinstance(found, dict) else {}


def set_control(step: StepRow, **changes: Any) -> None:
    """Merge `changes` into the step's operator state."""
    step.spec = {**step.spec, CONTROL: {**control(step), **changes}}


def patched(step: StepRow) -> bool:
    """The step's inputs were replaced at a resume (they are in `spec["inputs"]`)."""
    return bool(control(step).get("patched"))


def dormant(step: StepRow) -> bool:
    """A compensation step no failure has queued (yet): it never starts on its own."""
    return bool(control(step).get("dormant"))


def compensating(step: StepRow) -> bool:
    """A compensation step a failure queued: it runs although its run has failed."""
    return "compensates" in control(step)


def errors_of(step: StepRow) -> dict[str, dict[str, Any] | None]:
    """`${{ steps.ID.error }}` data for a compensation step: {failed step id: {kind, message}}."""
    comp = control(step).get("compensates")
    return {comp["step"]: comp["error"]} if isinstance(comp, dict) else {}


def approval_of(s: Scheduler, run: RunRow, step: StepRow) -> ApprovalSpec | None:
    """The approval `step` needs before it runs: its own, or (an agent's tool call) its agent's for that tool."""
    parent = A.parent_of(step)
    if parent is None:
        spec = s._step_spec(run, step).approval
        return spec if spec is not None and not spec.tools else None
    if A.unit_of(step) != "call":
        return None
    agent = s._step_spec(run, parent).approval
    tool = (step.spec.get("inputs") or {}).get("tool")
    return agent if agent is not None and tool in agent.tools else None


# -- the claim's gate ----------------------------------------------------------------------------


def gate(s: Scheduler, b: Batch, run: RunRow, step: StepRow, now: int) -> bool:
    """True when `step` must not start now: its run is paused, it is a breakpoint (the run pauses), or it
    waits for approval (asked now). The step is then held or waiting, with no lease and no reservation."""
    state = control(step)
    if run.status is RunStatus.PAUSED:
        _hold(b, step)
        return True
    if step.step_id in s.run_spec(run).breakpoints and not state.get("passed") and A.parent_of(step) is None:
        run.status = RunStatus.PAUSED
        b.events.append(run_event(K.RUN_PAUSED, run, now, actor="", breakpoint=step.step_id))
        set_control(step, at_breakpoint=True)
        _hold(b, step)
        return True
    need = approval_of(s, run, step)
    if need is None or (state.get("approval") or {}).get("state") == "granted":
        return False
    step.status = StepStatus.WAITING_APPROVAL
    step.not_before_us = now + need.timeout_ms * 1000 if need.timeout_ms else 0  # the deadline, 0: none
    step.lease_owner, step.lease_expires_us = "", 0
    set_control(step, approval={"state": "requested", "requested_us": now, "timeout_ms": need.timeout_ms or 0})
    b.step(step)
    b.events.append(step_event(K.APPROVAL_REQUESTED, run, step, step.attempt, now,
                               timeout_ms=need.timeout_ms or 0,
                               tool=str((step.spec.get("inputs") or {}).get("tool", ""))
                               if A.parent_of(step) else ""))
    return True


def _hold(b: Batch, step: StepRow) -> None:
    step.status = StepStatus.PAUSED
    step.lease_owner, step.lease_expires_us = "", 0
    b.step(step)


# -- answers -------------------------------------------------------------------------------------


def answer(s: Scheduler, tx: Tx, b: Batch, run: RunRow, step: StepRow, now: int, *, allow: bool, actor: str,
           reason: str, kind: ErrorKind = ErrorKind.POLICY_DENIED) -> None:
    """Record a person's answer to a waiting step (or a timeout, `kind` approval_timeout): a `human_approval`
    decision with the wait, an approval event, then the step queued, or denied (an agent's tool call is
    answered to the model as a tool error; any other step fails its run)."""
    state = control(step)
    wait_us = max(0, now - int((state.get("approval") or {}).get("requested_us", now)))
    kinds = s._redacts(run, step.step_id)
    reason = reason[:_REASON_CHARS]
    if kinds:
        reason = redact_pii(reason, kinds)[0]
    effect = Effect.ALLOW if allow else Effect.DENY
    attempt = step.attempt + 1  # the attempt the answer lets run (or denies): its span holds the decision
    why = reason or (f"approved by {actor}" if allow else f"denied by {actor}")
    b.decisions.append(DecisionRow(str(uuid.uuid4()), run.id, step.step_id, attempt, HUMAN_APPROVAL_PACK,
                                   str(Hook.PRE), str(effect), why, now, wait_us))
    b.events.append(step_event(K.POLICY_DECISION, run, step, attempt, now, pack=HUMAN_APPROVAL_PACK,
                               hook=str(Hook.PRE), effect=str(effect), reason=why, raw={"actor": actor},
                               wait_ms=wait_us / 1000))
    if allow:
        set_control(step, approval={**(state.get("approval") or {}), "state": "granted"})
        s._queue(b, run, step, now, not_before=now)
        b.events.append(step_event(K.APPROVAL_GRANTED, run, step, attempt, now, actor=actor, reason=reason,
                                   wait_ms=wait_us / 1000))
        b.events.append(step_event(K.STEP_QUEUED, run, step, step.attempt, now,
                                   queue_target_ms=step.queue_target_ms, priority_boost=step.priority_boost))
        return
    b.events.append(step_event(K.APPROVAL_DENIED, run, step, attempt, now, actor=actor, reason=reason,
                               wait_ms=wait_us / 1000, error_kind=str(kind)))
    message = f"{HUMAN_APPROVAL_PACK}: {why}"
    step.attempt = attempt
    if A.parent_of(step) is None:
        claiming.deny(s, b, run, step, attempt, now, kind, message, HUMAN_APPROVAL_PACK, actor)
        return
    step.status, step.finished_us, step.error_kind = StepStatus.DENIED, now, str(kind)
    step.output = {"error": f"denied by {message}"}
    b.step(step)
    b.new_attempts.append(AttemptRow(run.id, step.step_id, attempt, "denied", actor, now, now, str(kind)))
    b.events.append(step_event(K.STEP_DENIED, run, step, attempt, now, error_kind=str(kind), reason=message,
                               pack=HUMAN_APPROVAL_PACK))
    completion.release(s, tx, b, [(run.id, step.step_id)], actor, now)  # its agent answers the model and goes on
    b.touched_runs.add(run.id)


def expire(s: Scheduler, tx: Tx, b: Batch, now: int, limit: int) -> None:
    """Time out up to `limit` approval waits past their deadline (failure kind approval_timeout)."""
    waiting = tx.lock_expired_approvals(now, limit)
    if not waiting:
        return
    b.add_runs(tx.get_runs(sorted({w.run_id for w in waiting})))
    for step in waiting:
        timeout = int((control(step).get("approval") or {}).get("timeout_ms", 0))
        answer(s, tx, b, b.runs[step.run_id], step, now, allow=False, actor="",
               reason=f"no answer within approval.timeout_ms={timeout}", kind=ErrorKind.APPROVAL_TIMEOUT)


# -- compensation --------------------------------------------------------------------------------


def mark_dormant(spec: RunSpec, steps: Sequence[StepRow]) -> None:
    """At submit: compensation steps wait for a failure only (a dependency no step release satisfies)."""
    targets = {s.execution.compensation for s in spec.steps if s.execution.compensation}
    for row in steps:
        if row.step_id in targets:
            row.status, row.deps_remaining = StepStatus.PENDING, row.deps_remaining + 1
            set_control(row, dormant=True)


def on_failed(s: Scheduler, b: Batch, run: RunRow, step: StepRow, kind: str, message: str) -> None:
    """`step` failed for good: remember to queue its compensation step (a step of the spec, not a unit)."""
    if A.parent_of(step) is not None:
        return
    comp = s._step_spec(run, step).execution.compensation
    if comp:
        b.compensations.append((run.id, comp, step.step_id, kind, message))


def start_compensations(b: Batch, run: RunRow, open_steps: Sequence[StepRow], now: int) -> None:
    """Queue the dormant compensation steps failures of this batch named, with the failure for references."""
    wanted = [c for c in b.compensations if c[0] == run.id]
    if not wanted:
        return
    by_id = {row.step_id: row for row in open_steps}
    for _, comp, failed, kind, message in wanted:
        row = by_id.get(comp)
        if row is None or not dormant(row):
            continue  # already queued by another failure, or ended
        state = control(row)
        state.pop("dormant", None)
        state["compensates"] = {"step": failed, "error": {"kind": kind, "message": message}}
        row.spec = {**row.spec, CONTROL: state}
        row.status, row.deps_remaining = StepStatus.QUEUED, 0
        row.ready_us = row.not_before_us = now
        row.due_us = now + (row.queue_target_ms - row.priority_boost) * 1000
        b.step(row)
        b.events.append(step_event(K.COMPENSATION_QUEUED, run, row, 0, now, compensates=failed, error_kind=kind))
        b.events.append(step_event(K.STEP_QUEUED, run, row, 0, now, queue_target_ms=row.queue_target_ms,
                                   priority_boost=row.priority_boost))
