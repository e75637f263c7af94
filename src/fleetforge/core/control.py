"""Run operations for people: approve or deny a waiting step, pause a run, resume it (optionally with
patched step inputs). The CLI, the Python client and the HTTP API all call these; each is one store
transaction that writes the change and its events together (docs/runtime.md, "Operators in control").
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from typing import Any, Final

from fleetforge.core import agent as A
from fleetforge.core import budgets as B
from fleetforge.core import completion, gates
from fleetforge.core.batch import Batch
from fleetforge.core.events import run_event, step_event
from fleetforge.core.policies.pii import redact_json
from fleetforge.core.runtime import Runtime
from fleetforge.domain import dataflow as flow
from fleetforge.domain.errors import ConflictError, NotFoundError, SpecError
from fleetforge.domain.models import NOT_STARTED, TERMINAL_RUN, ErrorKind, RunRow, RunStatus, StepRow, StepStatus
from fleetforge.domain.names import EventKind as K
from fleetforge.domain.spec import MAX_SPEC_BYTES, check_step_inputs
from fleetforge.ports.store import Tx

__all__ = ["MAX_ACTOR_CHARS", "MAX_REASON_CHARS", "answer", "approve", "default_actor", "deny", "pause", "resume"]

MAX_ACTOR_CHARS: Final = 128
MAX_REASON_CHARS: Final = 500


def default_actor() -> str:
    """Who acts when nobody is named: the OS user."""
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError, ImportError):
        return "unknown"


def _actor(actor: str | None) -> str:
    name = default_actor() if actor is None else actor
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_ACTOR_CHARS \
            or any(ord(c) < 32 for c in name):
        raise SpecError([f"actor: got {name!r:.80}, expected a name of 1 to {MAX_ACTOR_CHARS} printable characters "
                         "(--as NAME)"])
    return name


def _reason(reason: str | None, required: bool) -> str:
    text = "" if reason is None else reason
    if not isinstance(text, str) or len(text) > MAX_REASON_CHARS or (required and not text.strip()):
        need = "a non-empty reason" if required else "a reason"
        raise SpecError([f"reason: got {text!r:.80}, expected {need} of at most {MAX_REASON_CHARS} characters "
                         "(--reason TEXT)"])
    return text


def _run(rt: Runtime, tx: Tx, run_id: str) -> RunRow:
    """The run, read after locking its budget row: a claim of one of its steps holds that row while it may
    start the run, so this write and a claim's never cross (steps are locked before, as claims do)."""
    tx.lock_budgets([B.run_scope(run_id)])
    run = tx.get_runs([run_id]).get(run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id!r}; list runs with `fleetforge runs list`")
    return run


def answer(rt: Runtime, run_id: str, step_id: str, *, allow: bool, reason: str, actor: str,
           kind: ErrorKind = ErrorKind.POLICY_DENIED) -> None:
    """Answer a waiting step with `actor` and `reason` taken as given (`approve`/`deny` check them first);
    a denial fails with `kind` (approval_timeout: a timeout, as a replay answers one from its record)."""
    s = rt.scheduler
    with rt.store.transaction() as tx:
        open_rows = tx.lock_open_steps([run_id])
        run = _run(rt, tx, run_id)
        step = next((r for r in open_rows if r.step_id == step_id), None)
        if step is None or step.status is not StepStatus.WAITING_APPROVAL:
            found = step or next((r for r in tx.get_steps(run_id) if r.step_id == step_id), None)
            if found is None:
                raise NotFoundError(f"run {run_id} has no step {step_id!r}; its steps: "
                                    f"`fleetforge runs get {run_id}`")
            raise ConflictError(f"step {step_id!r} of run {run_id} is {found.status}, not waiting for approval; "
                                "only a step with status waiting_approval can be approved or denied")
        b = Batch()
        b.add_runs({run.id: run})
        now = rt.clock.now_us()
        gates.answer(s, tx, b, run, step, now, allow=allow, actor=actor, reason=reason, kind=kind)
        unit = A.parent_of(step) is not None  # its agent may have grown new units: read the open steps again
        completion.finish_failed_runs(s, tx, b, now, None if unit else open_rows)
        b.flush(tx, now)
    rt._emit(b.events)


def approve(rt: Runtime, run_id: str, step_id: str, *, reason: str | None = None, actor: str | None = None) -> None:
    """Approve a step (or an agent's tool call) waiting for approval: it is queued and runs."""
    answer(rt, run_id, step_id, allow=True, reason=_reason(reason, False), actor=_actor(actor))


def deny(rt: Runtime, run_id: str, step_id: str, reason: str, *, actor: str | None = None) -> None:
    """Deny a waiting step with a reason: the step is denied and fails its run; an agent's tool call is
    answered to the model as a tool error instead."""
    answer(rt, run_id, step_id, allow=False, reason=_reason(reason, True), actor=_actor(actor))


def pause(rt: Runtime, run_id: str, *, actor: str | None = None) -> bool:
    """Pause a run: no new step starts (running attempts finish). False when it was already paused."""
    who = _actor(actor)
    with rt.store.transaction() as tx:
        run = _run(rt, tx, run_id)
        if run.status in TERMINAL_RUN:
            raise ConflictError(f"run {run_id} already {run.status}; only a run not yet ended can be paused")
        if run.status is RunStatus.PAUSED:
            return False
        now = rt.clock.now_us()
        run.status = RunStatus.PAUSED
        tx.update_runs([run])
        events = [run_event(K.RUN_PAUSED, run, now, actor=who, breakpoint="")]
        tx.append_events(events)
    rt._emit(events)
    return True


def resume(rt: Runtime, run_id: str, *, patches: Mapping[str, Any] | None = None,
           actor: str | None = None) -> list[str]:
    """Resume a paused run; `patches` replaces the inputs of steps not started yet (step id -> inputs),
    validated as at submit. Returns the ids of the patched steps. Nothing is changed on a bad patch."""
    who = _actor(actor)
    s = rt.scheduler
    with rt.store.transaction() as tx:
        rows = {r.step_id: r for r in tx.lock_open_steps([run_id])}
        run = _run(rt, tx, run_id)
        if run.status is not RunStatus.PAUSED:
            raise ConflictError(f"run {run_id} is {run.status}, not paused; pause it first "
                                f"(`fleetforge runs pause {run_id}`)")
        now = rt.clock.now_us()
        changed = _check_patches(rt, run, rows, patches or {})
        b = Batch()
        b.add_runs({run.id: run})
        for sid, (inputs, keys) in changed.items():
            step = rows[sid]
            step.spec = {**step.spec, "inputs": inputs}
            gates.set_control(step, patched=True)
            b.step(step)
            b.events.append(step_event(K.STEP_PATCHED, run, step, step.attempt, now, actor=who, changed=keys))
        for step in rows.values():
            if step.status is StepStatus.PAUSED:
                if gates.control(step).get("at_breakpoint"):
                    gates.set_control(step, passed=True, at_breakpoint=False)
                s._queue(b, run, step, now, not_before=now)
                b.events.append(step_event(K.STEP_QUEUED, run, step, step.attempt, now,
                                           queue_target_ms=step.queue_target_ms, priority_boost=step.priority_boost))
        run.status = RunStatus.RUNNING if run.started_us is not None else RunStatus.QUEUED
        b.events.insert(0, run_event(K.RUN_RESUMED, run, now, actor=who, patched=sorted(changed)))
        b.flush(tx, now)
    rt._emit(b.events)
    return sorted(changed)


def _check_patches(rt: Runtime, run: RunRow, rows: Mapping[str, StepRow],
                   patches: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each patch checked as submit checks step inputs: {step id: (inputs to store, keys changed)}."""
    spec = rt.scheduler.run_spec(run)
    steps = {st.id: st for st in spec.steps}
    above = flow.ancestors({st.id: st.depends_on for st in spec.steps})
    problems: list[str] = []
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for sid, inputs in patches.items():
        path = f"patch.{sid}"
        step, row = steps.get(sid), rows.get(sid)
        if step is None:
            problems.append(f"{path}: got an unknown step, expected a step of the run "
                            f"(known: {', '.join(list(steps)[:20])})")
            continue
        if row is None or row.status not in NOT_STARTED or row.attempt or A.parent_of(row) is not None:
            status = row.status if row is not None else "ended"
            problems.append(f"{path}: got step {sid!r} with status {status}, expected a step that has not "
                            "started (pending, queued, paused or waiting_approval)")
            continue
        try:
            size = flow.json_size(inputs) if isinstance(inputs, dict) else -1
        except (TypeError, ValueError):
            size = -1
        if size < 0:
            problems.append(f"{path}: got {type(inputs).__name__}, expected a JSON object of step inputs")
            continue
        if size > MAX_SPEC_BYTES:
            problems.append(f"{path}: got more than {MAX_SPEC_BYTES} bytes of JSON, expected at most 1 MiB")
            continue
        held = {where for where, _ in flow.find_refs(inputs, path)[0]}
        problems += [p for p in check_step_inputs(step.type, inputs, path) if p.split(": ", 1)[0] not in held]
        failing = frozenset(st.id for st in spec.steps if st.execution.compensation == sid)
        problems += flow.check_refs(inputs, path, step=sid, ancestors_of=above.get(sid, frozenset()),
                                    known=frozenset(steps), run_inputs=spec.inputs, compensates=failing)[0]
        kinds = rt.scheduler._redacts(run, sid)
        stored = redact_json(inputs, kinds)[0] if kinds else dict(inputs)
        before = rt.scheduler._step_spec(run, row).inputs
        keys = sorted(k for k in set(before) | set(stored) if before.get(k, None) != stored.get(k, None)
                      or (k in before) != (k in stored))
        out[sid] = (stored, keys)
    if problems:
        raise SpecError(problems)
    return out
