"""What people did in a recorded run, done again in its replay (docs/runtime.md, "Fork and replay").

Before the replay starts, `plant_operators` gives each step the inputs a resume patched (the step row
keeps them) and marks the breakpoints the original passed as passed, so the replay neither pauses there
nor asks with other inputs. While it runs, `OperatorDesk` answers each approval wait with the record's
next `human_approval` decision for that step (effect, reason; a denial's kind and actor from its attempt
row), in order. A wait or a pause the record has no answer for is a difference, and the run is canceled
in the scratch store, so the replay ends instead of waiting for its timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from fleetforge.core import control as C
from fleetforge.core import gates
from fleetforge.core.fork import reused_source
from fleetforge.core.replay_report import RunRecord
from fleetforge.core.runtime import Runtime
from fleetforge.domain.errors import ConflictError
from fleetforge.domain.models import TERMINAL_RUN, ErrorKind, RunSpec, RunStatus, StepStatus
from fleetforge.domain.names import HUMAN_APPROVAL_PACK
from fleetforge.ports.store import DecisionRow, Tx

__all__ = ["OperatorDesk", "plant_operators"]

_ERROR_KINDS: Final = {k.value: k for k in ErrorKind}


def _steered(spec: RunSpec) -> bool:
    """A run of `spec` may wait for a person: a breakpoint, or a step with `approval`."""
    return bool(spec.breakpoints) or any(st.approval is not None for st in spec.steps)


def plant_operators(tx: Tx, record: RunRecord) -> None:
    """Give the planted run `record.run.id` the record's resume patches and passed breakpoints."""
    changed = []
    for row in tx.get_steps(record.run.id):
        rec = record.steps.get(row.step_id)
        if rec is None or reused_source(row) is not None:
            continue
        patched, passed = gates.patched(rec), bool(gates.control(rec).get("passed"))
        if patched:
            row.spec = {**row.spec, "inputs": rec.spec["inputs"]}
            gates.set_control(row, patched=True)
        if passed:
            gates.set_control(row, passed=True)
        if patched or passed:
            changed.append(row)
    if changed:
        tx.update_steps(changed)


class OperatorDesk:
    """Answers the replay's approval waits from the records and ends what the records cannot answer."""

    def __init__(self, runtime: Runtime, records: Sequence[RunRecord]) -> None:
        self.runtime = runtime
        self.records = {r.run.id: r for r in records if _steered(runtime.scheduler.run_spec(r.run))}
        self.answers: dict[tuple[str, str], deque[DecisionRow]] = {}
        for r in records:
            for d in sorted(r.decisions, key=lambda d: (d.at_us, d.attempt)):
                if d.pack == HUMAN_APPROVAL_PACK:
                    self.answers.setdefault((r.run.id, d.step_id), deque()).append(d)
        self.answered: dict[str, int] = {}
        self.differences: dict[str, list[str]] = {}

    async def serve(self, done: asyncio.Future[Any], poll_s: float = 0.01) -> None:
        """Look at the replayed runs every `poll_s` until `done` (the worker) ends."""
        while self.records and not done.done():
            self.look()
            await asyncio.wait([done], timeout=poll_s)

    def look(self) -> None:
        """Answer every step now waiting for approval; cancel runs stuck on what the record cannot answer.
        Only runs that may wait for a person are looked at."""
        store = self.runtime.store
        for run_id, record in self.records.items():
            run = store.get_run(run_id)
            if run is None or run.status in TERMINAL_RUN:
                continue
            steps = store.get_steps(run_id)
            if run.status is RunStatus.PAUSED:
                held = [s.step_id for s in steps if gates.control(s).get("at_breakpoint")]
                self._give_up(run_id, f"the replay paused at breakpoint {', '.join(held) or '?'}, which the "
                              "record never passed")
                continue
            for step in steps:
                if step.status is StepStatus.WAITING_APPROVAL:
                    self._answer(record, step.step_id)

    def _answer(self, record: RunRecord, step_id: str) -> None:
        run_id = record.run.id
        queue = self.answers.get((run_id, step_id))
        if not queue:
            self._give_up(run_id, f"step {step_id} waits for approval, and the record has no answer for it")
            return
        decision = queue[0]
        denied = next((a for a in record.attempts.get(step_id, [])
                       if a.attempt == decision.attempt and a.status == "denied"), None)
        allow = decision.effect == "allow"
        kind = _ERROR_KINDS.get(denied.error_kind if denied else "", ErrorKind.POLICY_DENIED)
        actor = denied.worker if denied is not None else ""
        try:
            C.answer(self.runtime, run_id, step_id, allow=allow, reason=decision.reason, actor=actor, kind=kind)
        except ConflictError:
            return  # answered meanwhile (a short approval.timeout_ms expired): the comparison judges it
        queue.popleft()
        self.answered[run_id] = self.answered.get(run_id, 0) + 1

    def _give_up(self, run_id: str, why: str) -> None:
        self.differences.setdefault(run_id, []).append(why)
        self.runtime.cancel(run_id)
