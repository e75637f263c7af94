"""Units of an agent that holds its worker (a graph step): each turn and tool call is a child step.

A graph runs inside one attempt of its agent step, in the worker that claimed it. Each chat-model call
and tool call it makes is recorded as the native agent's units are (core/agent.py): a child step
`<agent>.t<k>` of type llm or `<agent>.t<k>.c<call id>` of type tool, claimed through the ordinary
claim path (budget reservation, pre-hook guardrails, ledger row, `step_started`) before it runs and
settled through the ordinary completion path (post-hooks, reconciliation, terminal event) after. The
rows are marked `held`: never queued for another worker, never retried by the scheduler (a failure
goes back to the graph, whose step retries) and never ending the run by themselves.

A unit that already ended is recognised instead of created again when a node runs again after a retry:
turns by a digest of their request, tool calls by the model's call id.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from fleetforge.core import agent as A
from fleetforge.core import budgets as B
from fleetforge.core import claiming, completion
from fleetforge.core.batch import Batch, Claim, Outcome
from fleetforge.core.events import step_event
from fleetforge.core.policies.pii import redact_json
from fleetforge.core.scheduler import Scheduler
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import TERMINAL_RUN, ErrorKind, StepRow, StepStatus, StepType
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.executor import ExecutionResult, HeldUnit, StepFailure
from fleetforge.ports.store import Tx

if TYPE_CHECKING:
    from fleetforge.core.worker import Worker

__all__ = ["HeldUnits", "close_unit", "open_unit"]

_TURN_PREFIX: Final = ".t"


def open_unit(s: Scheduler, tx: Tx, agent: Claim, unit: A.Unit, key: str, worker: str,
              now: int) -> tuple[StepRow | None, Claim | None, list[Envelope]]:
    """Create (or find) a held unit and claim it: (row, claim or None when it must not run, events).

    An ended unit (succeeded or denied) is returned as it is; one that failed, or was left running by a
    worker that died, gets a new attempt. A claim that was denied leaves the row `denied`. In a run that
    ended or is failing nothing new starts: (None, None, events)."""
    run = tx.get_runs([agent.run.id])[agent.run.id]
    events: list[Envelope] = []
    found = tx.lock_steps([(run.id, unit.step_id)])
    row = found[0] if found else None
    if row is not None and row.status is StepStatus.RUNNING:  # its worker died mid-call: settle it first
        spec = s._step_spec(run, row)
        res = B.reservation_for(spec, s.executors[row.type].estimate(spec))
        orphan = Claim(run, row, spec, row.attempt, {}, res, row.lease_owner, row.started_us or now)
        _, events = s.complete(tx, [Outcome(orphan, now, failure=StepFailure(
            ErrorKind.CRASH, f"lease of worker {row.lease_owner} expired"))], now)
        row = tx.lock_steps([(run.id, unit.step_id)])[0]
    if row is not None and row.status in (StepStatus.SUCCEEDED, StepStatus.DENIED):
        return row, None, events
    if run.status in TERMINAL_RUN or run.error_kind:
        return None, None, events
    b = Batch()
    b.add_runs({run.id: run})
    kinds = s._redacts(run, agent.step.step_id)
    inputs = redact_json(unit.inputs, kinds)[0] if kinds else unit.inputs  # nothing kept in clear
    if row is None:
        slo = agent.spec.policy.slo
        row = StepRow(
            run_id=run.id, step_id=unit.step_id, type=unit.type, status=StepStatus.PENDING,
            spec={**A.child_row_spec(agent.step.step_id, A.Unit(unit.step_id, unit.type, unit.kind, inputs),
                                     False), A.HELD: True, A.KEY: key},
            attempt=0, max_attempts=1, deps_remaining=0, due_us=now, ready_us=now, not_before_us=now,
            queue_target_ms=slo.queue_target_ms, priority_boost=slo.priority_boost, slo_tier=slo.tier)
        tx.insert_steps([row], [])
        b.events.append(step_event(K.STEP_QUEUED, run, row, 0, now, queue_target_ms=row.queue_target_ms,
                                   priority_boost=row.priority_boost))
    else:  # a new attempt: the pending status keeps it from other workers' claims
        row.status, row.lease_owner, row.lease_expires_us = StepStatus.PENDING, "", 0
        row.spec = {**row.spec, "inputs": inputs}
        s._parsed(run).children.pop(row.step_id, None)
    claim = claiming.claim_one(s, tx, b, run, row, worker, now, None)
    if claim is not None:
        row.spec = {**row.spec, "inputs": claim.inputs}  # what the unit receives, after the pre-hooks
    completion.finish_failed_runs(s, tx, b, now)
    b.flush(tx, now)
    return row, claim, events + b.events


def close_unit(s: Scheduler, tx: Tx, claim: Claim, result: ExecutionResult | None, failure: StepFailure | None,
               now: int) -> tuple[StepRow | None, list[Envelope]]:
    """Settle a held unit's attempt; (its row after the post-hooks, or None when its lease was lost)."""
    accepted, events = s.complete(tx, [Outcome(claim, now, result=result, failure=failure)], now)
    if not accepted:
        return None, events
    return tx.lock_steps([(claim.run.id, claim.step.step_id)])[0], events


class HeldUnits:
    """`AgentUnits` for one attempt of a graph step, on its worker's store thread (see module doc)."""

    def __init__(self, worker: Worker, claim: Claim) -> None:
        self._w = worker
        self._claim = claim
        self._agent = claim.step.step_id
        self._children: dict[str, StepRow] | None = None
        self._used: set[str] = set()
        self._call_turn: dict[str, str] = {}
        self._last_turn = A.turn_id(self._agent, 0)
        self._lock = asyncio.Lock()
        self.database = str(getattr(worker.store, "database", ""))
        self.schema = str(getattr(worker.store, "schema", "") or "")

    async def _load(self) -> dict[str, StepRow]:
        if self._children is None:
            rows = await self._w._call(lambda: self._w.store.get_steps(self._claim.run.id))
            self._children = {r.step_id: r for r in rows if A.parent_of(r) == self._agent}
            for r in self._children.values():
                self._note_calls(r)
        return self._children

    def _note_calls(self, row: StepRow) -> None:
        if A.unit_of(row) == "turn" and isinstance(row.output, dict):
            for call in row.output.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    self._call_turn[call["id"]] = row.step_id

    async def turn(self, inputs: dict[str, Any], key: str) -> HeldUnit:
        async with self._lock:
            children = await self._load()
            turns = sorted((r for r in children.values() if A.unit_of(r) == "turn"),
                           key=lambda r: _turn_number(r.step_id))
            sid = next((r.step_id for r in turns if r.spec.get(A.KEY) == key and r.step_id not in self._used), None)
            if sid is None:
                sid = A.turn_id(self._agent, 1 + max((_turn_number(r.step_id) for r in turns), default=0))
            self._used.add(sid)
            self._last_turn = sid
        return await self._open(A.Unit(sid, StepType.LLM, "turn", inputs), key)

    async def call(self, call_id: str, tool: str, args: dict[str, Any]) -> HeldUnit:
        async with self._lock:
            await self._load()  # which turn asked for it
            sid = A.call_id(self._call_turn.get(call_id, self._last_turn), call_id, 0, set())
        return await self._open(A.Unit(sid, StepType.TOOL, "call", {"tool": tool, "args": args}), call_id)

    async def _open(self, unit: A.Unit, key: str) -> HeldUnit:
        w = self._w
        while True:
            def work() -> tuple[StepRow | None, Claim | None, list[Envelope]]:
                with w.store.transaction() as tx:
                    return open_unit(w.scheduler, tx, self._claim, unit, key, w.worker_id, w.clock.now_us())

            row, claim, events = await w._call(work)
            w._emit(events)
            if row is None:
                raise StepFailure(ErrorKind.CRASH, f"{unit.step_id}: the run ended or failed, no new call starts",
                                  provider="langgraph")
            if self._children is not None:
                self._children[row.step_id] = row
            if claim is not None:
                w._units[(row.run_id, row.step_id)] = claim  # its lease is extended with the agent's
                return HeldUnit(row.step_id, claim.attempt, claim.inputs, handle=claim)
            if row.status is StepStatus.SUCCEEDED:  # recognised: it ran in an earlier attempt
                self._note_calls(row)
                return HeldUnit(row.step_id, row.attempt, dict(row.spec.get("inputs") or {}),
                                output=dict(row.output or {}))
            if row.status is StepStatus.DENIED:
                reason = str((row.output or {}).get("error") or f"denied ({row.error_kind})")
                if unit.kind == "call" and row.error_kind == ErrorKind.POLICY_DENIED:
                    return HeldUnit(row.step_id, row.attempt, {}, refusal=reason)
                kind = ErrorKind(row.error_kind) if row.error_kind in ErrorKind.__members__.values() \
                    else ErrorKind.POLICY_DENIED
                raise StepFailure(kind, f"{row.step_id} denied: {reason}", provider="langgraph")
            if row.status is not StepStatus.PENDING:  # skipped: the run is failing
                raise StepFailure(ErrorKind.CRASH, f"{row.step_id}: the run ended or failed", provider="langgraph")
            await asyncio.sleep(w.scheduler.config.defer_delay_ms / 1000)  # deferred by an in-flight cap

    async def finish(self, unit: HeldUnit, result: ExecutionResult | None = None,
                     failure: StepFailure | None = None) -> dict[str, Any]:
        claim = unit.handle
        if not isinstance(claim, Claim):
            return dict(unit.output or {})
        w = self._w

        def work() -> tuple[StepRow | None, list[Envelope]]:
            with w.store.transaction() as tx:
                return close_unit(w.scheduler, tx, claim, result, failure, w.clock.now_us())

        try:
            row, events = await w._call(work)
        finally:
            w._units.pop((claim.run.id, claim.step.step_id), None)
        w._emit(events)
        if row is None:
            raise StepFailure(ErrorKind.CRASH, f"{unit.step_id}: lease lost", provider="langgraph")
        if self._children is not None:
            self._children[row.step_id] = row
        self._note_calls(row)
        if row.status is StepStatus.SUCCEEDED:
            return dict(row.output or {})
        if row.error_kind == ErrorKind.POLICY_DENIED:  # a post-hook denied the answer or the tool result
            raise StepFailure(ErrorKind.POLICY_DENIED, f"{unit.step_id}: output denied", provider="langgraph")
        return {"error": row.error_kind}


def _turn_number(step_id: str) -> int:
    tail = step_id.rsplit(_TURN_PREFIX, 1)[-1]
    return int(tail) if tail.isdigit() else 0
