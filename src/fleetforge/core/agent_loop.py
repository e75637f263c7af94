"""How the scheduler advances an `agent` step when it is claimed (see core/agent.py and docs/runtime.md).

The agent step never holds a worker while its units run: when claimed it reads its children's committed
rows, creates the next units (child steps, queued) and parks itself as `pending` with a dependency on each
of them, so the ordinary release of dependents wakes it when the last one ends. When the model gave a
final answer (or max_turns was reached) it is leased to the claiming worker, which settles it through
the ordinary completion path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from fleetforge.core import agent as A
from fleetforge.core import claiming, gates
from fleetforge.core.batch import Batch, Claim
from fleetforge.core.events import run_event, step_event
from fleetforge.domain.models import TERMINAL_STEP, ErrorKind, RunRow, RunStatus, StepRow, StepSpec, StepStatus
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.policy import Hook
from fleetforge.ports.store import AttemptRow, Tx

if TYPE_CHECKING:
    from fleetforge.core.scheduler import Scheduler

__all__ = ["advance"]

_INVALID: Final = "invalid"
"""Key of an agent row's spec: why its references could not be resolved (the agent fails with validation)."""
_PASSES: Final = 4
"""Coordination passes per claim: a pass whose new units were all refused (answered at once) goes on."""


def advance(s: Scheduler, tx: Tx, b: Batch, run: RunRow, step: StepRow, worker: str, now: int,
            *, room: int, settle: bool = True) -> list[Claim]:
    """Create the agent's next units and park it, or lease it to `worker` to settle it. One transaction.

    Up to `room` of the new units are leased to `worker` at once (the caller holds the run's budget
    rows), so the next unit waits for no other claim; the others stay queued. With ``settle=False``
    (lease recovery, or a worker with no room) an agent whose loop ended stays queued for the next claim
    to settle. Returns the claims made."""
    spec = s._step_spec(run, step)
    if step.attempt == 0 and not _start(s, tx, b, run, step, spec, worker, now):
        return []
    spec = s._step_spec(run, step)  # with its references resolved
    # its units as committed (read with the completion that woke it: its open ones stay locked since), then
    # as changed in this transaction
    committed = b.run_steps[run.id] if run.id in b.run_steps else tx.get_steps(run.id)
    children = {c.step_id: c for c in committed if A.parent_of(c) == step.step_id}
    children.update((sid, row) for (rid, sid), row in b.steps.items()
                    if rid == run.id and A.parent_of(row) == step.step_id)
    model = str(spec.inputs.get("model", ""))
    invalid = step.spec.get(_INVALID)
    for _ in range(_PASSES):
        decision = A.Decision(failure=(ErrorKind.VALIDATION, invalid)) if isinstance(invalid, str) \
            else A.coordinate(spec, children)
        if not settle and (decision.failure is not None or decision.output is not None):
            return []
        if decision.failure is not None:
            kind, message = decision.failure
            return [claiming.agent_claim(s, b, run, step, {"failure": {"kind": str(kind), "message": message},
                                                           "model": model}, worker, now)]
        if decision.output is not None:
            return [claiming.agent_claim(s, b, run, step, {"output": decision.output, "model": model}, worker, now)]
        new = [_unit_row(s, b, run, step, spec, unit, worker, now) for unit in decision.create]
        children.update((r.step_id, r) for r in new)
        if new:
            tx.insert_steps(new, [(run.id, step.step_id, r.step_id) for r in new if r.status is StepStatus.QUEUED])
        waiting = [cid for cid in decision.wait if children[cid].status not in TERMINAL_STEP]
        if waiting:
            step.status, step.deps_remaining = StepStatus.PENDING, len(waiting)
            step.lease_owner, step.lease_expires_us = "", 0
            b.step(step)
            claims: list[Claim] = []
            for row in new:
                if row.status is StepStatus.QUEUED and len(claims) < room and not gates.gate(s, b, run, row, now):
                    claim = claiming.claim_one(s, tx, b, run, row, worker, now, None)
                    if claim is not None:
                        claims.append(claim)
            b.wake = b.wake or any(r.status is StepStatus.QUEUED for r in new)
            return claims
    step.not_before_us = now  # refused again and again: look again at the next claim
    b.step(step)
    return []


def _start(s: Scheduler, tx: Tx, b: Batch, run: RunRow, step: StepRow, spec: StepSpec, worker: str,
           now: int) -> bool:
    """Begin the agent's one attempt (it spans all its units): resolve its references and run the pre-hook
    guardrails on them, as for any step, and keep the result in its row for every later turn. False when
    a guardrail denied it."""
    step.attempt = 1
    inputs: dict[str, Any] = {}
    if step.step_id in s._parsed(run).flows:
        inputs, invalid = claiming.resolve(s, tx, run, spec, step)
        if invalid is not None:
            step.spec, inputs = {_INVALID: invalid}, {}  # fails as the agent's answer (validation)
        else:
            if s.run_spec(run).packs or spec.policy.packs:
                inputs, denied = s._policy(b, Hook.PRE, run, step, spec, 1, inputs, now)
                if denied is not None:
                    claiming.deny(s, b, run, step, 1, now, ErrorKind.POLICY_DENIED, denied, denied.split(":", 1)[0],
                                  worker)
                    return False
            step.spec = {"inputs": inputs}
    step.started_us = now
    if run.status is RunStatus.QUEUED:
        run.status, run.started_us = RunStatus.RUNNING, now
        b.events.append(run_event(K.RUN_STARTED, run, now, queue_lag_ms=(now - run.created_us) / 1000))
    b.events.append(step_event(K.STEP_STARTED, run, step, 1, now, queue_lag_ms=max(0, now - step.ready_us) / 1000,
                               worker=worker, inputs=inputs))
    b.step(step)
    return True


def _unit_row(s: Scheduler, b: Batch, run: RunRow, agent: StepRow, spec: StepSpec, unit: A.Unit, worker: str,
              now: int) -> StepRow:
    """The row of a new unit: queued, or (a refused tool call) denied at once with the reason as its output."""
    slo = spec.policy.slo
    row = StepRow(
        run_id=run.id, step_id=unit.step_id, type=unit.type, status=StepStatus.QUEUED, spec={},
        attempt=0, max_attempts=spec.execution.max_attempts, deps_remaining=0,
        due_us=now + (slo.queue_target_ms - slo.priority_boost) * 1000, ready_us=now, not_before_us=now,
        queue_target_ms=slo.queue_target_ms, priority_boost=slo.priority_boost, slo_tier=slo.tier)
    refusal, kind, pack = unit.refusal, ErrorKind.VALIDATION, ""
    inputs: dict[str, Any] = unit.inputs
    checked = unit.kind == "call" and bool(s.run_spec(run).packs or spec.policy.packs)
    row.spec = A.child_row_spec(agent.step_id, unit, checked)
    if checked and not refusal:  # tool_acl and the other pre-hooks decide each call the model asks for
        child = s._step_spec(run, row)
        inputs, denied = s._policy(b, Hook.PRE, run, row, child, 1, dict(inputs), now)
        if denied is not None:
            refusal, kind, pack = f"denied by {denied}", ErrorKind.POLICY_DENIED, denied.split(":", 1)[0]
        row.spec = A.child_row_spec(agent.step_id, replace(unit, inputs=inputs), True)
        s._parsed(run).children.pop(row.step_id, None)  # built from the inputs before the pre-hooks
    if refusal:
        row.status, row.attempt, row.started_us, row.finished_us = StepStatus.DENIED, 1, now, now
        row.error_kind, row.output = str(kind), {"error": refusal}
        b.new_attempts.append(AttemptRow(run.id, row.step_id, 1, "denied", worker, now, now, str(kind)))
        b.events.append(step_event(K.STEP_DENIED, run, row, 1, now, error_kind=str(kind), reason=refusal,
                                   pack=pack))
        return row
    b.events.append(step_event(K.STEP_QUEUED, run, row, 0, now, queue_target_ms=row.queue_target_ms,
                               priority_boost=row.priority_boost))
    return row
