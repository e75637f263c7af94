"""State transitions of runs and steps. Every method runs inside one store transaction and writes
the state change, the cost ledger, policy decisions and the outbox events together. Claiming and
completion live in core/claiming.py and core/completion.py, the transaction's bookkeeping in
core/batch.py; this module holds the spec cache, the shared helpers, submission, leases and cancel."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from fleetforge.core import agent as A
from fleetforge.core import budgets as B
from fleetforge.core import claiming, completion, gates
from fleetforge.core.batch import Batch, Claim, Outcome
from fleetforge.core.completion import ERROR_CHARS
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.dataflow import has_refs
from fleetforge.core.events import run_event, step_event
from fleetforge.core.policies.pii import redact_json, redact_pii, step_redaction_kinds
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import (
    NOT_STARTED,
    TERMINAL_RUN,
    BudgetLimit,
    BudgetRow,
    ErrorKind,
    RunRow,
    RunSpec,
    RunStatus,
    StepRow,
    StepSpec,
    StepStatus,
    StepType,
)
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.executor import Executor, StepFailure
from fleetforge.ports.policy import Effect, Hook, PolicyContext, PolicyPack
from fleetforge.ports.store import DecisionRow, Tx

__all__ = ["ERROR_CHARS", "Claim", "Outcome", "Scheduler"]


class _ParsedRun:
    """A run's spec with its steps by id, the ids some other step depends on, and the PII kinds
    each step keeps redacted (absent when none)."""

    __slots__ = ("children", "depended_on", "flows", "parents", "redacts", "spec", "steps")

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.steps: dict[str, StepSpec] = {}
        for s in spec.steps:
            self.steps.setdefault(s.id, s)  # the first of a (never stored) duplicate id, as a scan finds it
        self.depended_on = frozenset(d for s in spec.steps for d in s.depends_on)
        self.redacts = {sid: kinds for sid, s in self.steps.items()
                        for kinds in [step_redaction_kinds(spec, s)] if kinds}
        self.flows = frozenset(sid for sid, s in self.steps.items() if has_refs(s.inputs))
        self.children: dict[str, StepSpec] = {}  # specs of agent units, built from their rows
        self.parents: dict[str, str] = {}  # agent unit id -> its agent step id

    def step(self, row: StepRow | str) -> StepSpec:
        """The spec of a step of the run, or of a unit an agent step grew (from its row)."""
        sid = row if isinstance(row, str) else row.step_id
        if not isinstance(row, str) and gates.patched(row):  # inputs replaced at a resume
            return replace(self.steps[sid], inputs=dict(row.spec["inputs"]))
        found = self.steps.get(sid) or self.children.get(sid)
        if found is not None or isinstance(row, str):
            return found if found is not None else self.steps[sid]
        parent = A.parent_of(row)
        if parent is None:
            raise KeyError(sid)
        found = self.children[sid] = A.child_spec(row, self.steps[parent])
        self.parents[sid] = parent
        return found

    def kinds(self, step_id: str) -> frozenset[str]:
        """PII kinds of a step; an agent's units keep the agent's."""
        kinds = self.redacts.get(step_id)
        if kinds is None and step_id in self.parents:
            kinds = self.redacts.get(self.parents[step_id])
        return kinds or frozenset()


class Scheduler:
    """Claims, completions, lease recovery and cancellation, as pure logic over a `Tx`."""

    def __init__(
        self,
        *,
        executors: Mapping[str, Executor],
        packs: Mapping[str, PolicyPack],
        parse: Callable[[Mapping[str, Any]], RunSpec],
        config: RuntimeConfig | None = None,
    ) -> None:
        self.executors = executors
        self.packs = packs
        self.parse = parse
        self.config = config or RuntimeConfig()
        self._specs: OrderedDict[str, _ParsedRun] = OrderedDict()

    # -- helpers -------------------------------------------------------------------------------

    def _parsed(self, run: RunRow) -> _ParsedRun:
        parsed = self._specs.get(run.id)
        if parsed is None:
            parsed = self._specs[run.id] = _ParsedRun(self.parse(run.spec))
            if len(self._specs) > 4096:
                self._specs.popitem(last=False)
        return parsed

    def run_spec(self, run: RunRow) -> RunSpec:
        return self._parsed(run).spec

    def _step_spec(self, run: RunRow, step: StepRow | str) -> StepSpec:
        spec = self._parsed(run).step(step)
        if (not isinstance(step, str) and step.type == StepType.AGENT and isinstance(step.spec.get("inputs"), dict)
                and not A.holds_worker(spec)):
            return replace(spec, inputs=step.spec["inputs"])  # resolved at the agent's first claim, kept
        return spec

    def _budgets(self, tx: Tx, b: Batch, run: RunRow) -> list[BudgetRow]:
        scopes = B.scopes_of(run)
        missing = [s for s in scopes if s not in b.budgets]
        if missing:
            found = tx.lock_budgets(missing)
            for s in missing:
                b.add_budget(found.get(s) or BudgetRow(s, None, None))
        return [b.budgets[s] for s in scopes]

    def _redacts(self, run: RunRow, step_id: str) -> frozenset[str]:
        """The PII kinds what `step_id` of `run` records must not hold in clear (empty: none)."""
        return self._parsed(run).kinds(step_id)

    def _has_dependents(self, run: RunRow, step: StepRow) -> bool:
        """Some step waits for `step`: a step of the spec, or its agent (for an agent's unit)."""
        return step.step_id in self._parsed(run).depended_on or A.parent_of(step) is not None

    def _budget_locks(self, b: Batch, runs: Iterable[RunRow], moving: set[str]) -> tuple[list[str], list[str]]:
        """The budget rows a batch locks (in one statement, in one sorted order), and those of them locked only
        when they carry a limit. Locked: each run's own row, every row the batch may change (`moving`), and
        every shared row (app, fleet) whose values decide something: one with a limit, and the fleet row when
        in-flight caps are set. Other shared rows are not locked (and stand in as rows without limits): with
        no limit and nothing to add, no outcome depends on their values, and workers need not queue on them."""
        runs = list(runs)
        scopes = sorted({s for run in runs for s in B.scopes_of(run)} - b.budgets.keys())
        own = {B.run_scope(run.id) for run in runs}
        caps = self.config.max_inflight_tokens is not None or self.config.max_inflight_cost is not None
        return scopes, [s for s in scopes if s not in own and s not in moving and not (s == B.FLEET and caps)]

    @staticmethod
    def _add_budgets(b: Batch, scopes: list[str], found: Mapping[str, BudgetRow]) -> None:
        for s in scopes:  # a shared row left out has no limit: its values decide nothing, and it stays as is
            b.add_budget(found.get(s) or BudgetRow(s, None, None))

    def _policy(self, b: Batch, hook: Hook, run: RunRow, step: StepRow, spec: StepSpec, attempt: int,
                payload: dict[str, Any], now: int, **ctx: Any) -> tuple[dict[str, Any], str | None]:
        """Evaluate the run's and step's packs for `hook`. Returns (payload, deny reason or None).

        When the step redacts PII, each decision's reason and raw details are recorded redacted."""
        kinds = self._redacts(run, step.step_id)
        for pack_spec in (*self.run_spec(run).packs, *spec.policy.packs):
            pack = self.packs[pack_spec.name]
            if hook not in pack.hooks:
                continue
            verdict = pack.evaluate(PolicyContext(run_id=run.id, step=spec, hook=hook, payload=payload,
                                                  options=pack_spec.options, **ctx))
            reason, raw = verdict.reason, verdict.raw
            if kinds:
                reason, raw = redact_pii(reason, kinds)[0], redact_json(raw, kinds)[0]
            b.decisions.append(DecisionRow(str(uuid.uuid4()), run.id, step.step_id, attempt, pack.name,
                                           str(hook), str(verdict.effect), reason, now))
            b.events.append(step_event(K.POLICY_DECISION, run, step, attempt, now, pack=pack.name,
                                       hook=str(hook), effect=str(verdict.effect), reason=reason, raw=raw,
                                       wait_ms=0.0))
            if verdict.effect is Effect.DENY:
                return payload, f"{pack.name}: {reason}"
            if verdict.effect is Effect.MODIFY and verdict.payload is not None:
                payload = verdict.payload
        return payload, None

    def _queue(self, b: Batch, run: RunRow, step: StepRow, now: int, *, not_before: int) -> None:
        step.status = StepStatus.QUEUED
        step.ready_us = not_before
        step.not_before_us = not_before
        step.due_us = not_before + (step.queue_target_ms - step.priority_boost) * 1000
        step.lease_owner, step.lease_expires_us = "", 0
        b.step(step)

    # -- submission ----------------------------------------------------------------------------

    def submit(self, tx: Tx, run: RunRow, steps: list[StepRow], deps: list[tuple[str, str, str]],
               spec: RunSpec, now: int) -> list[Envelope]:
        """Store a validated run with its steps and budgets; roots are queued."""
        tx.insert_run(run)
        tx.insert_steps(steps, deps)
        run_limit = spec.budget or BudgetLimit()
        app = B.app_scope(run.workspace, run.app)
        # every scope a claim will lock exists from now on, so concurrent claims never race to create one
        tx.ensure_budgets([B.row_for_limit(B.run_scope(run.id), run_limit), BudgetRow(app, None, None),
                           BudgetRow(B.FLEET, None, None)])
        app_limit = self.config.app_budgets.get(f"{run.workspace}/{run.app}")
        if app_limit is not None:
            row = tx.lock_budgets([app])[app]
            fresh = B.row_for_limit(app, app_limit)
            if (row.tokens_limit, row.cost_limit_micros) != (fresh.tokens_limit, fresh.cost_limit_micros):
                row.tokens_limit, row.cost_limit_micros = fresh.tokens_limit, fresh.cost_limit_micros
                tx.upsert_budgets([row])
        events = [run_event(K.RUN_SUBMITTED, run, now, steps=len(steps),
                            budget_tokens=(spec.budget.tokens or 0) if spec.budget else 0,
                            budget_cost_usd=(spec.budget.cost or 0.0) if spec.budget else 0.0,
                            labels=run.labels)]
        events += [step_event(K.STEP_QUEUED, run, s, 0, now, queue_target_ms=s.queue_target_ms,
                              priority_boost=s.priority_boost)
                   for s in steps if s.status is StepStatus.QUEUED]
        tx.append_events(events)
        tx.notify_ready()
        return events

    # -- claim and completion (core/claiming.py, core/completion.py) ---------------------------

    def claim(self, tx: Tx, worker: str, now: int, limit: int) -> tuple[list[Claim], list[Envelope]]:
        """Lease up to `limit` ready steps, least slack first, after budget and policy checks."""
        return claiming.claim(self, tx, worker, now, limit)

    def complete(self, tx: Tx, outcomes: Sequence[Outcome], now: int) -> tuple[list[Outcome], list[Envelope]]:
        """Record finished attempts. Returns the outcomes accepted (lease still held) and the events."""
        accepted, _, events = completion.complete_and_claim(self, tx, outcomes, now, "", 0)
        return accepted, events

    def complete_and_claim(self, tx: Tx, outcomes: Sequence[Outcome], now: int, worker: str,
                           room: int) -> tuple[list[Outcome], list[Claim], list[Envelope]]:
        """`complete`, and lease to `worker` (up to `room`) the units of the agents these outcomes woke, in
        the same transaction. Returns accepted outcomes, claims and events."""
        return completion.complete_and_claim(self, tx, outcomes, now, worker, room)

    # -- leases and cancellation ---------------------------------------------------------------

    def extend_leases(self, tx: Tx, claims: Iterable[Claim], now: int) -> list[Claim]:
        """Push the lease of live claims forward; returns the claims whose lease was lost."""
        claims = list(claims)
        live = {(s.run_id, s.step_id): s for s in tx.lock_steps([(c.run.id, c.step.step_id) for c in claims])}
        lost, keep = [], []
        for c in claims:
            s = live.get((c.run.id, c.step.step_id))
            if s is None or s.status is not StepStatus.RUNNING or s.lease_owner != c.worker \
                    or s.attempt != c.attempt:
                lost.append(c)
                continue
            s.lease_expires_us = now + self.config.lease_ms * 1000
            keep.append(s)
        if keep:
            tx.update_steps(keep)
        return lost

    def reap(self, tx: Tx, now: int, limit: int = 100) -> list[Envelope]:
        """Fail attempts whose lease expired (their worker died) so they are retried, never lost."""
        b = Batch()
        gates.expire(self, tx, b, now, limit)  # approval waits past their deadline
        if b.runs:
            completion.finish_failed_runs(self, tx, b, now)
            b.flush(tx, now)
        expired = tx.lock_expired_leases(now, limit)
        if not expired:
            return b.events
        runs = tx.get_runs([s.run_id for s in expired])
        outcomes = []
        for s in expired:
            run = runs[s.run_id]
            spec = self._step_spec(run, s)
            res = B.reservation_for(spec, self.executors[s.type].estimate(spec))
            tool, provider = self.executors[s.type].target(spec)
            claim = Claim(run, s, spec, s.attempt, {}, res, s.lease_owner, s.lease_expires_us
                          - self.config.lease_ms * 1000)
            failure = StepFailure(ErrorKind.CRASH, f"lease of worker {s.lease_owner} expired",
                                  tool=tool, provider=provider)
            outcomes.append(Outcome(claim, now, failure=failure))
        _, events = self.complete(tx, outcomes, now)
        return b.events + events

    def cancel(self, tx: Tx, run_id: str, now: int) -> list[Envelope]:
        """Cancel a run: pending and queued steps are canceled; running attempts finish on their own."""
        run = tx.get_runs([run_id]).get(run_id)
        if run is None or run.status in TERMINAL_RUN:
            return []
        b = Batch()
        run.status, run.finished_us = RunStatus.CANCELED, now
        b.runs[run.id] = run
        for s in tx.lock_open_steps([run_id]):
            if s.status in NOT_STARTED:
                s.status, s.finished_us = StepStatus.CANCELED, now
                b.step(s)
                b.events.append(step_event(K.STEP_SKIPPED, run, s, s.attempt, now, reason="run canceled"))
        b.events.append(run_event(K.RUN_CANCELED, run, now, duration_ms=(now - run.created_us) / 1000,
                                  queue_target_ms=run.queue_target_ms))
        b.flush(tx, now)
        return b.events

