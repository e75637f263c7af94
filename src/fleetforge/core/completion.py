"""Completion: settle finished attempts (ledger, budgets, retries, dependents released, runs closed) and
lease at once the next units of the agents they wake (the scheduler's `complete_and_claim`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleetforge.core import agent as A
from fleetforge.core import agent_loop, gates
from fleetforge.core import budgets as B
from fleetforge.core.batch import Batch, Claim, Outcome, doomed, mark_failed, moves_budgets
from fleetforge.core.dataflow import run_outputs
from fleetforge.core.events import run_event, step_event
from fleetforge.core.policies.pii import redact_pii
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import (
    NOT_STARTED,
    TERMINAL_RUN,
    TERMINAL_STEP,
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
from fleetforge.ports.executor import ExecutionResult, StepFailure
from fleetforge.ports.policy import Hook
from fleetforge.ports.store import AttemptRow, Tx

if TYPE_CHECKING:
    from fleetforge.core.scheduler import Scheduler

__all__ = ["ERROR_CHARS", "complete_and_claim", "finish_failed_runs", "release"]

ERROR_CHARS = 500
"""Length of the error message a `step_failed` event keeps (after redaction)."""
_SCAN_CHARS = 4 * ERROR_CHARS  # of a failure message, redacted before it is cut to ERROR_CHARS


def complete_and_claim(sched: Scheduler, tx: Tx, outcomes: Sequence[Outcome], now: int, worker: str,
                       room: int) -> tuple[list[Outcome], list[Claim], list[Envelope]]:
    """`complete`, and lease to `worker` (up to `room`) the units of the agents these outcomes woke, in
    the same transaction: an agent's next unit waits for no claim. Returns accepted outcomes, claims
    and events."""
    b = Batch()
    # Lock every open step of these runs (their dependents and siblings too) before any budget
    # row: a claim holds queued steps while it waits for budget rows, so locking siblings after
    # the budgets (in finish_failed_runs) would deadlock with it.
    # Then the runs' state now (the rest never changes), their budget rows and, for agents' runs, every step
    # and edge: one round trip.
    keys = {(o.claim.run.id, o.claim.step.step_id) for o in outcomes}
    given = {o.claim.run.id: o.claim.run for o in outcomes}
    moving: set[str] = set()
    for o in outcomes:  # an agent's unit may wake it, and the agent lease its next unit at once
        if moves_budgets(o) or (room > 0 and A.parent_of(o.claim.step) is not None):
            moving.update(B.scopes_of(o.claim.run))
    scopes, shared = sched._budget_locks(b, given.values(), moving)
    agents = sorted({o.claim.run.id for o in outcomes if A.parent_of(o.claim.step) is not None})
    open_rows, runs, found, b.run_steps, b.run_deps = tx.lock_for_completion(
        sorted(given), list(given.values()), scopes, shared, agents)
    b.locked = {(s.run_id, s.step_id): s for s in open_rows if s.run_id in b.run_deps}
    live = {(s.run_id, s.step_id): s for s in open_rows if (s.run_id, s.step_id) in keys}
    b.add_runs(runs)
    sched._add_budgets(b, scopes, found)
    accepted: list[Outcome] = []
    claims: list[Claim] = []
    released: list[tuple[str, str]] = []
    for o in outcomes:
        step = live.get((o.claim.run.id, o.claim.step.step_id))
        if (step is None or step.status is not StepStatus.RUNNING or step.lease_owner != o.claim.worker
                or step.attempt != o.claim.attempt):
            continue  # lease lost: the reaper already recorded this attempt
        accepted.append(o)
        run = b.runs[step.run_id]
        if _finish_attempt(sched, tx, b, run, step, o, now) and sched._has_dependents(run, step):
            released.append((step.run_id, step.step_id))
    if released:
        claims += release(sched, tx, b, released, worker, now, room)
    # Nothing else of these runs changed in the database since their open steps were locked above but
    # released dependents (in the batch now, as any step it changed) and the units agents created (each
    # of those agents is open, and its run with it). Only a run that failed must read them again: its
    # open steps are skipped, and what is written must be their current rows.
    finish_failed_runs(sched, tx, b, now, None if released and b.failed_runs else open_rows)
    b.flush(tx, now)
    return accepted, claims, b.events


def release(sched: Scheduler, tx: Tx, b: Batch, done: list[tuple[str, str]], worker: str, now: int,
             room: int = 0) -> list[Claim]:
    """Queue the dependents of the `done` (run id, step id) steps whose last dependency this was; an
    agent they wake leases its next units to `worker` at once, up to `room`. Returns those claims."""
    claims: list[Claim] = []
    here = [k for k in done if k[0] in b.run_deps]
    there = [k for k in done if k[0] not in b.run_deps]
    for dep in sorted(_release_here(b, here) + (tx.release_dependents(there) if there else []),
                      key=lambda s: (s.run_id, s.step_id)):
        run = b.runs.get(dep.run_id) or tx.get_runs([dep.run_id])[dep.run_id]
        b.runs[run.id] = run
        if doomed(run, b):
            continue
        sched._queue(b, run, dep, now, not_before=now)
        if dep.type == StepType.AGENT and dep.attempt:  # woken by its units: its next ones, at once
            claims += agent_loop.advance(sched, tx, b, run, dep, worker, now, room=room - len(claims),
                                         settle=room > len(claims))
            continue
        b.events.append(step_event(K.STEP_QUEUED, run, dep, 0, now, queue_target_ms=dep.queue_target_ms,
                                   priority_boost=dep.priority_boost))
    return claims


def _release_here(b: Batch, done: list[tuple[str, str]]) -> list[StepRow]:
    """`Tx.release_dependents` for steps of runs whose edges and open steps this transaction read and
    locked: the same decrements, made on the rows in `b` (written at flush). Returns the released."""
    hits: dict[tuple[str, str], int] = {}
    for rid, sid in dict.fromkeys(done):
        for step_id, on in b.run_deps[rid]:
            if on == sid:
                hits[(rid, step_id)] = hits.get((rid, step_id), 0) + 1
    released = []
    for key, n in hits.items():
        row = b.steps.get(key) or b.locked.get(key)
        if row is None or row.status is not StepStatus.PENDING:
            continue
        row.deps_remaining -= n
        b.step(row)
        if row.deps_remaining == 0:
            released.append(row)
    return released


def _finish_attempt(sched: Scheduler, tx: Tx, b: Batch, run: RunRow, step: StepRow, o: Outcome, now: int) -> bool:
    """Settle one attempt; True when the step succeeded and its dependents may be released."""
    spec, attempt, failure = o.claim.spec, o.claim.attempt, o.failure
    result = o.result
    if o.claim.invalid is not None:  # never executed: its inputs did not resolve
        result, failure = None, StepFailure(ErrorKind.VALIDATION, o.claim.invalid)
    if result is not None:
        output, denied = sched._policy(b, Hook.POST, run, step, spec, attempt, dict(result.output), now)
        if denied is not None:
            failure = StepFailure(ErrorKind.POLICY_DENIED, denied, usage=result.usage, tool=result.tool,
                                  provider=result.provider)
        else:
            result = ExecutionResult(output, result.usage, result.tool, result.provider, result.model,
                                     result.latency_ms)
    usage = result.usage if failure is None and result is not None else (failure.usage if failure else None)
    used_tokens = usage.tokens if usage else 0
    used_micros = to_micros(usage.cost_usd) if usage else 0
    res = o.claim.reservation
    rows = sched._budgets(tx, b, run)
    B.settle(rows, reserve_tokens=-res.tokens, reserve_micros=-res.micros,
             use_tokens=used_tokens, use_micros=used_micros)
    room = B.headroom(rows)
    duration_ms = (o.finished_us - o.claim.started_us) / 1000
    tool = (result.tool if failure is None and result else failure.tool if failure else "") or ""
    provider = (result.provider if failure is None and result else failure.provider if failure else "") or ""
    defaults = sched.executors[step.type].target(spec)
    tool, provider = tool or defaults[0], provider or defaults[1]
    if failure is not None:  # step_failed names what the ledger names (a timeout knows no tool)
        failure.tool, failure.provider = tool, provider
    b.done_attempts.append(AttemptRow(
        run.id, step.step_id, attempt, "failed" if failure else "succeeded", o.claim.worker,
        o.claim.started_us, o.finished_us, str(failure.kind) if failure else "",
        res.tokens, used_tokens, res.micros, used_micros,
        usage.input_tokens if usage else 0, usage.output_tokens if usage else 0,
        usage.cached_tokens if usage else 0, tool, provider,
        result.model if result and failure is None else ""))
    b.events.append(step_event(
        K.BUDGET_RECONCILED, run, step, attempt, now, tokens_reserved=res.tokens, tokens_used=used_tokens,
        cost_reserved_usd=to_usd(res.micros), cost_used_usd=to_usd(used_micros),
        tokens_limit=room.tokens_limit, tokens_remaining=room.tokens_remaining,
        cost_remaining_usd=to_usd(room.cost_remaining_micros),
        cost_limit_usd=to_usd(room.cost_limit_micros), budget_active=room.active))
    if step.type in (StepType.TOOL, StepType.HTTP):  # every attempt that ran, as the ledger counts them
        b.events.append(step_event(K.TOOL_CALL, run, step, attempt, now, tool=tool, provider=provider,
                                   ok=failure is None, error_kind=str(failure.kind) if failure else "",
                                   latency_ms=duration_ms))
    step.lease_owner, step.lease_expires_us = "", 0
    if failure is None and result is not None:
        return _succeed(sched, b, run, step, spec, result, o, used_tokens, used_micros, duration_ms, now)
    assert failure is not None
    return _fail(sched, b, run, step, spec, failure, o.finished_us, used_tokens, used_micros, duration_ms, now)


def _succeed(sched: Scheduler, b: Batch, run: RunRow, step: StepRow, spec: StepSpec, result: ExecutionResult,
             o: Outcome, tokens: int, micros: int, duration_ms: float, now: int) -> bool:
    step.status, step.finished_us, step.error_kind = StepStatus.SUCCEEDED, o.finished_us, ""
    step.output = result.output
    b.step(step)
    u = result.usage
    b.events.append(step_event(
        K.STEP_SUCCEEDED, run, step, o.claim.attempt, now, tokens=tokens, cost_usd=to_usd(micros),
        duration_ms=duration_ms, tool=result.tool, provider=result.provider, model=result.model,
        input_tokens=u.input_tokens, output_tokens=u.output_tokens, cached_tokens=u.cached_tokens,
        recovered_after_ms=(o.finished_us - step.first_failure_us) / 1000 if step.first_failure_us else 0.0))
    b.touched_runs.add(run.id)
    return not doomed(run, b)


def _fail(sched: Scheduler, b: Batch, run: RunRow, step: StepRow, spec: StepSpec, failure: StepFailure,
          finished_us: int, tokens: int, micros: int, duration_ms: float, now: int) -> bool:
    """Record a failed attempt: retry it, or end the step. True when an agent's tool call ended:
    its agent answers the model with the error (a guardrail or budget denial still ends the run)."""
    attempt = step.attempt
    retry = (failure.kind.retriable and attempt < step.max_attempts and not A.held(step)
             and (not doomed(run, b) or gates.compensating(step)))
    step.first_failure_us = step.first_failure_us or finished_us
    step.error_kind = str(failure.kind)
    error = failure.message[:_SCAN_CHARS]
    kinds = sched._redacts(run, step.step_id)
    if kinds:  # a failure message may echo the inputs or the output
        error = redact_pii(error, kinds)[0]
    b.events.append(step_event(
        K.STEP_FAILED, run, step, attempt, now, tokens=tokens, cost_usd=to_usd(micros),
        duration_ms=duration_ms, error_kind=str(failure.kind), error=error[:ERROR_CHARS],
        tool=failure.tool, provider=failure.provider, final=not retry))
    if retry:
        ex = spec.execution
        backoff_us = int(ex.retry_backoff_ms * ex.retry_backoff_factor ** (attempt - 1) * 1000)
        if failure.retry_after_s:
            backoff_us = max(backoff_us, int(failure.retry_after_s * 1_000_000))
        sched._queue(b, run, step, now, not_before=now + backoff_us)
        b.events.append(step_event(K.STEP_RETRY_SCHEDULED, run, step, attempt, now,
                                   next_attempt=attempt + 1, backoff_ms=backoff_us / 1000,
                                   error_kind=str(failure.kind)))
        return False
    step.status, step.finished_us = StepStatus.FAILED, finished_us
    b.step(step)
    if A.held(step):  # its graph step decides what the failure means
        b.touched_runs.add(run.id)
        return False
    if A.unit_of(step) == "call" and failure.kind not in (ErrorKind.POLICY_DENIED, ErrorKind.BUDGET_EXCEEDED):
        b.touched_runs.add(run.id)
        return not doomed(run, b)
    gates.on_failed(sched, b, run, step, str(failure.kind), error[:ERROR_CHARS])
    mark_failed(b, run, str(failure.kind))
    return False


def finish_failed_runs(sched: Scheduler, tx: Tx, b: Batch, now: int, open_rows: list[StepRow] | None = None) -> None:
    """Skip what failed runs will never run, and close every touched run whose steps are done.

    `open_rows`: the open steps of (at least) the touched runs, locked earlier in this transaction
    and unchanged in the database since; read (and locked) here when None.
    """
    if not b.touched_runs:
        return
    open_steps: dict[str, list[StepRow]] = {rid: [] for rid in b.touched_runs}
    if open_rows is None:
        open_rows = tx.lock_open_steps(sorted(b.touched_runs))
    for s in open_rows:
        if s.run_id not in open_steps:
            continue
        s = b.steps.get((s.run_id, s.step_id), s)
        if s.status not in TERMINAL_STEP:
            open_steps[s.run_id].append(s)
    for rid in sorted(b.touched_runs):
        run = b.runs[rid]
        if run.status in TERMINAL_RUN:
            continue
        gates.start_compensations(b, run, open_steps[rid], now)
        still_running = False
        unneeded = [s for s in open_steps[rid] if gates.dormant(s)]  # compensation steps no failure queued
        for s in open_steps[rid]:
            if gates.dormant(s):
                continue
            if rid in b.failed_runs and s.status in NOT_STARTED and not gates.compensating(s):
                s.status, s.finished_us = StepStatus.SKIPPED, now
                b.step(s)
                b.events.append(step_event(K.STEP_SKIPPED, run, s, s.attempt, now,
                                           reason=f"run failed ({run.error_kind})"))
            else:
                still_running = True
        if still_running:
            continue
        for s in unneeded:
            s.status, s.finished_us = StepStatus.SKIPPED, now
            b.step(s)
            b.events.append(step_event(K.STEP_SKIPPED, run, s, s.attempt, now, reason="compensation not needed"))
        failed = rid in b.failed_runs or run.error_kind != ""
        run.status = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
        run.finished_us = now
        b.runs[rid] = run
        if not failed:
            run.outputs = _outputs_of(sched, tx, b, run) if sched.run_spec(run).outputs else {}
        extra: dict[str, Any] = {"error_kind": run.error_kind} if failed else {"outputs": run.outputs}
        b.events.append(run_event(K.RUN_FAILED if failed else K.RUN_SUCCEEDED, run, now,
                                  duration_ms=(now - run.created_us) / 1000,
                                  queue_target_ms=run.queue_target_ms, **extra))


def _outputs_of(sched: Scheduler, tx: Tx, b: Batch, run: RunRow) -> dict[str, Any]:
    """The run's `outputs` resolved, from the stored outputs and those this batch has not written yet."""
    outputs = {s.step_id: s.output for s in tx.get_steps(run.id)}
    outputs.update((sid, s.output) for (rid, sid), s in b.steps.items() if rid == run.id)
    return run_outputs(sched.run_spec(run), outputs)
