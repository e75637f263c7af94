"""Claiming: lease ready steps to a worker after the budget, in-flight cap and policy checks (the
scheduler's `claim`), and the denials and agent leases made on the way. One store transaction each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetforge.core import agent as A
from fleetforge.core import agent_loop, completion, gates
from fleetforge.core import budgets as B
from fleetforge.core.batch import Batch, Claim, doomed, mark_failed
from fleetforge.core.dataflow import has_refs, resolve_step_inputs
from fleetforge.core.events import run_event, step_event
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import (
    BudgetRow,
    ErrorKind,
    RunRow,
    RunStatus,
    StepRow,
    StepSpec,
    StepStatus,
    StepType,
)
from fleetforge.domain.money import to_micros, to_usd
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.policy import Hook
from fleetforge.ports.store import AttemptRow, Tx

if TYPE_CHECKING:
    from fleetforge.core.scheduler import Scheduler

__all__ = ["agent_claim", "claim", "claim_one", "deny", "resolve"]


def claim(sched: Scheduler, tx: Tx, worker: str, now: int, limit: int) -> tuple[list[Claim], list[Envelope]]:
    """Lease up to `limit` ready steps, least slack first, after budget and policy checks."""
    ready, first = tx.lock_ready(now, limit)
    if not ready:
        return [], []
    b = Batch()
    # What each step would reserve (executors' estimates are pure), to know the budget rows it moves.
    # A run ended or failed now stays so: its steps are skipped and reserve nothing.
    reservations: dict[tuple[str, str], B.Reservation] = {}
    moving: set[str] = set()
    for step in ready:
        run = first.get(step.run_id)
        if run is None or doomed(run, b):
            continue
        spec = sched._step_spec(run, step)
        res = reservations[(run.id, step.step_id)] = B.reservation_for(
            spec, sched.executors[step.type].estimate(spec))
        if res.tokens or res.micros or step.type == StepType.AGENT:  # an agent leases its first unit at once
            moving.update(B.scopes_of(run))
    # Lock the budget rows (see _budget_locks), then read the runs again: a concurrent claim of another
    # step of the same run has committed by then, so a run is started (run_started) only once.
    scopes, shared = sched._budget_locks(b, first.values(), moving)
    found, runs = tx.lock_for_claim(scopes, shared, list(first.values()))
    sched._add_budgets(b, scopes, found)
    b.add_runs(runs)
    claims: list[Claim] = []
    for index, step in enumerate(ready):
        run = b.runs[step.run_id]
        if doomed(run, b) and not gates.compensating(step):  # failed earlier (a denial): skipped, not started
            mark_failed(b, run, run.error_kind)
            continue
        if gates.gate(sched, b, run, step, now):  # paused, a breakpoint, or waiting for approval
            continue
        if step.type == StepType.AGENT and not A.holds_worker(sched._step_spec(run, step)):
            # its units take the room the rest of the batch leaves
            room = limit - len(claims) - (len(ready) - index - 1)
            claims += agent_loop.advance(sched, tx, b, run, step, worker, now, room=room)
            continue
        claim = claim_one(sched, tx, b, run, step, worker, now, reservations.get((run.id, step.step_id)))
        if claim is not None:
            claims.append(claim)
    completion.finish_failed_runs(sched, tx, b, now)
    b.flush(tx, now)
    return claims, b.events


def claim_one(sched: Scheduler, tx: Tx, b: Batch, run: RunRow, step: StepRow, worker: str, now: int,
               res: B.Reservation | None) -> Claim | None:
    spec = sched._step_spec(run, step)
    executor = sched.executors[step.type]
    if res is None:
        res = B.reservation_for(spec, executor.estimate(spec))
    rows = sched._budgets(tx, b, run)
    attempt = step.attempt + 1
    limit_breach = next((why for r in rows if r.scope != B.FLEET
                         for why in [B.exceeded(r, res.tokens, res.micros)] if why), None)
    caps = sched.config.max_inflight_tokens is not None or sched.config.max_inflight_cost is not None
    if limit_breach is None and caps:  # without caps nothing is deferred
        fleet = rows[-1]
        cap = B.exceeded(
            BudgetRow(B.FLEET, sched.config.max_inflight_tokens,
                      None if sched.config.max_inflight_cost is None
                      else to_micros(sched.config.max_inflight_cost),
                      fleet.tokens_reserved, 0, fleet.cost_reserved_micros, 0),
            res.tokens, res.micros)
        if cap is not None and (fleet.tokens_reserved or fleet.cost_reserved_micros):
            delay = sched.config.defer_delay_ms * 1000
            step.not_before_us = now + delay
            b.step(step)
            b.events.append(step_event(K.STEP_DEFERRED, run, step, step.attempt, now,
                                       reason=f"in-flight cap: {cap}", delay_ms=delay / 1000))
            return None
    step.attempt = attempt
    if limit_breach is not None:
        deny(sched, b, run, step, attempt, now, ErrorKind.BUDGET_EXCEEDED, limit_breach, "", worker)
        return None
    inputs, denied, invalid = dict(spec.inputs), None, None
    flows = step.step_id in sched._parsed(run).flows or (gates.patched(step) and has_refs(spec.inputs))
    if flows:
        inputs, invalid = resolve(sched, tx, run, spec, step)
    if invalid is None and (sched.run_spec(run).packs or spec.policy.packs) and not step.spec.get(A.PRECHECKED):
        run_rows = [r for r in rows if r.scope == B.run_scope(run.id)]
        inputs, denied = sched._policy(
            b, Hook.PRE, run, step, spec, attempt, inputs, now,
            tokens_reserved=res.tokens, cost_reserved=to_usd(res.micros),
            tokens_used_before=run_rows[0].tokens_used if run_rows else 0,
            cost_used_before=to_usd(run_rows[0].cost_used_micros) if run_rows else 0.0)
    if denied is not None:
        pack = denied.split(":", 1)[0]
        deny(sched, b, run, step, attempt, now, ErrorKind.POLICY_DENIED, denied, pack, worker)
        return None
    B.settle(rows, reserve_tokens=res.tokens, reserve_micros=res.micros)
    room = B.headroom(rows)
    tool, provider = executor.target(spec)
    step.status = StepStatus.RUNNING
    step.lease_owner = worker
    step.lease_expires_us = now + sched.config.lease_ms * 1000
    step.started_us = step.started_us or now
    if flows and invalid is None:  # what the executor receives: resolved, then through the pre-hook
        step.spec = {**step.spec, "inputs": inputs}
    b.step(step)
    b.new_attempts.append(AttemptRow(run.id, step.step_id, attempt, "running", worker, now,
                                     tokens_reserved=res.tokens, cost_reserved_micros=res.micros,
                                     tool=tool, provider=provider))
    if run.status is RunStatus.QUEUED:
        run.status, run.started_us = RunStatus.RUNNING, now
        b.events.append(run_event(K.RUN_STARTED, run, now, queue_lag_ms=(now - run.created_us) / 1000))
    b.events.append(step_event(
        K.BUDGET_RESERVED, run, step, attempt, now, tokens=res.tokens, cost_usd=to_usd(res.micros),
        source=res.source, tokens_limit=room.tokens_limit, cost_limit_usd=to_usd(room.cost_limit_micros),
        tokens_remaining=room.tokens_remaining, cost_remaining_usd=to_usd(room.cost_remaining_micros),
        tokens_projected_burn=room.tokens_committed,
        cost_projected_burn_usd=to_usd(room.cost_committed_micros), budget_active=room.active))
    b.events.append(step_event(K.STEP_STARTED, run, step, attempt, now,
                               queue_lag_ms=max(0, now - step.ready_us) / 1000, worker=worker,
                               inputs=inputs if flows and invalid is None else {}))
    return Claim(run, step, spec, attempt, inputs, res, worker, now, invalid)


def resolve(sched: Scheduler, tx: Tx, run: RunRow, spec: StepSpec, step: StepRow) -> tuple[dict[str, Any], str | None]:
    """`spec`'s inputs with their references resolved, or (inputs as written, why they cannot be)."""
    return resolve_step_inputs(sched.run_spec(run), spec, {s.step_id: s.output for s in tx.get_steps(run.id)},
                               gates.errors_of(step))


def agent_claim(sched: Scheduler, b: Batch, run: RunRow, step: StepRow, inputs: dict[str, Any], worker: str,
                 now: int) -> Claim:
    """Lease an agent step to settle it with its coordinator's decision (`inputs`: output or failure).

    Its attempt started when the coordinator first ran it (a retry after a lost lease is a new one)."""
    spec = sched._step_spec(run, step)
    if step.first_failure_us is not None:
        step.attempt += 1
        step.started_us = now
        b.events.append(step_event(K.STEP_STARTED, run, step, step.attempt, now, queue_lag_ms=0.0,
                                   worker=worker, inputs={}))
    started = step.started_us or now
    step.status, step.lease_owner = StepStatus.RUNNING, worker
    step.lease_expires_us = now + sched.config.lease_ms * 1000
    b.step(step)
    b.new_attempts.append(AttemptRow(run.id, step.step_id, step.attempt, "running", worker, started,
                                     tool=str(spec.inputs.get("model", "")), provider="agent"))
    return Claim(run, step, spec, step.attempt, inputs, B.Reservation(0, 0, "estimate"), worker, started)


def deny(sched: Scheduler, b: Batch, run: RunRow, step: StepRow, attempt: int, now: int, kind: ErrorKind,
          reason: str, pack: str, worker: str) -> None:
    step.status, step.finished_us, step.error_kind = StepStatus.DENIED, now, str(kind)
    b.step(step)
    b.new_attempts.append(AttemptRow(run.id, step.step_id, attempt, "denied", worker, now, now, str(kind)))
    b.events.append(step_event(K.STEP_DENIED, run, step, attempt, now, error_kind=str(kind),
                               reason=reason, pack=pack))
    if A.held(step) and A.unit_of(step) == "call" and kind is ErrorKind.POLICY_DENIED:
        step.output = {"error": f"denied by {reason}"}  # answered to the graph as a tool error
        b.touched_runs.add(run.id)
        return
    gates.on_failed(sched, b, run, step, str(kind), reason)
    mark_failed(b, run, str(kind))
