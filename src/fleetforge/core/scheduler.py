"""State transitions of runs and steps. Every method runs inside one store transaction and writes
the state change, the cost ledger, policy decisions and the outbox events together."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fleetforge.core import agent as A
from fleetforge.core import agent_loop, gates
from fleetforge.core import budgets as B
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.dataflow import has_refs, resolve_step_inputs, run_outputs
from fleetforge.core.events import run_event, step_event
from fleetforge.core.policies.pii import redact_json, redact_pii, step_redaction_kinds
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import (
    NOT_STARTED,
    TERMINAL_RUN,
    TERMINAL_STEP,
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
from fleetforge.domain.money import to_micros, to_usd
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.executor import ExecutionResult, Executor, StepFailure
from fleetforge.ports.policy import Effect, Hook, PolicyContext, PolicyPack
from fleetforge.ports.store import AttemptRow, DecisionRow, Tx

__all__ = ["ERROR_CHARS", "Claim", "Outcome", "Scheduler"]

ERROR_CHARS = 500
"""Length of the error message a `step_failed` event keeps (after redaction)."""
_SCAN_CHARS = 4 * ERROR_CHARS  # of a failure message, redacted before it is cut to ERROR_CHARS


@dataclass(slots=True)
class Claim:
    """An attempt a worker holds the lease for."""

    run: RunRow
    step: StepRow
    spec: StepSpec
    attempt: int
    inputs: dict[str, Any]
    reservation: B.Reservation
    worker: str
    started_us: int
    invalid: str | None = None  # why the inputs could not be resolved: the attempt fails (validation)


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: a result or a classified failure."""

    claim: Claim
    finished_us: int
    result: ExecutionResult | None = None
    failure: StepFailure | None = None


@dataclass(slots=True)
class _Batch:
    """What one transaction accumulates before writing."""

    events: list[Envelope] = field(default_factory=list)
    steps: dict[tuple[str, str], StepRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)
    budgets: dict[str, BudgetRow] = field(default_factory=dict)
    new_attempts: list[AttemptRow] = field(default_factory=list)
    done_attempts: list[AttemptRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    failed_runs: set[str] = field(default_factory=set)
    touched_runs: set[str] = field(default_factory=set)
    compensations: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # gates.on_failed
    wake: bool = False  # steps were queued ready now: wake the workers once this commits
    run_steps: dict[str, list[StepRow]] = field(default_factory=dict)  # every step of some runs, read at its start
    run_deps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # their edges (step id, depends on)
    locked: dict[tuple[str, str], StepRow] = field(default_factory=dict)  # open steps of those runs, locked
    # state of runs and budget rows as read, so that flush writes only the rows that changed
    run_seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    budget_seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def step(self, s: StepRow) -> None:
        self.steps[(s.run_id, s.step_id)] = s

    def add_runs(self, runs: Mapping[str, RunRow]) -> None:
        for r in runs.values():
            self.run_seen.setdefault(r.id, _run_state(r))
        self.runs.update(runs)

    def add_budget(self, row: BudgetRow) -> None:
        self.budget_seen.setdefault(row.scope, _budget_state(row))
        self.budgets[row.scope] = row

    def flush(self, tx: Tx, now: int) -> None:
        if self.wake or any(s.status is StepStatus.QUEUED and s.not_before_us <= now for s in self.steps.values()):
            tx.notify_ready()
        runs = [r for r in self.runs.values() if self.run_seen.get(r.id) != _run_state(r)]
        if runs:
            tx.update_runs(runs)
        if self.steps:
            tx.update_steps(list(self.steps.values()))
        budgets = [r for r in self.budgets.values() if self.budget_seen.get(r.scope) != _budget_state(r)]
        if budgets:
            tx.upsert_budgets(budgets)
        if self.new_attempts:
            tx.insert_attempts(self.new_attempts)
        if self.done_attempts:
            tx.finish_attempts(self.done_attempts)
        if self.decisions:
            tx.insert_decisions(self.decisions)
        if self.events:
            tx.append_events(self.events)


def _run_state(r: RunRow) -> tuple[Any, ...]:
    """The fields `Tx.update_runs` writes."""
    return (r.status, r.started_us, r.finished_us, r.error_kind)


def _budget_state(r: BudgetRow) -> tuple[Any, ...]:
    return (r.tokens_limit, r.cost_limit_micros, r.tokens_reserved, r.tokens_used, r.cost_reserved_micros,
            r.cost_used_micros)


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


def _moves_budgets(o: Outcome) -> bool:
    """Whether settling `o` may change budget rows: it reserved, or reports usage (either one)."""
    usages = [u.usage for u in (o.result, o.failure) if u is not None]
    return bool(o.claim.reservation.tokens or o.claim.reservation.micros
                or any(u.tokens or to_micros(u.cost_usd) for u in usages))


def _doomed(run: RunRow, b: _Batch) -> bool:
    """The run ended or failed: nothing more of it may start."""
    return run.status in TERMINAL_RUN or run.id in b.failed_runs or run.error_kind != ""


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

    def _budgets(self, tx: Tx, b: _Batch, run: RunRow) -> list[BudgetRow]:
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

    def _budget_locks(self, b: _Batch, runs: Iterable[RunRow], moving: set[str]) -> tuple[list[str], list[str]]:
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
    def _add_budgets(b: _Batch, scopes: list[str], found: Mapping[str, BudgetRow]) -> None:
        for s in scopes:  # a shared row left out has no limit: its values decide nothing, and it stays as is
            b.add_budget(found.get(s) or BudgetRow(s, None, None))

    def _policy(self, b: _Batch, hook: Hook, run: RunRow, step: StepRow, spec: StepSpec, attempt: int,
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

    def _queue(self, b: _Batch, run: RunRow, step: StepRow, now: int, *, not_before: int) -> None:
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

    # -- claim ---------------------------------------------------------------------------------

    def claim(self, tx: Tx, worker: str, now: int, limit: int) -> tuple[list[Claim], list[Envelope]]:
        """Lease up to `limit` ready steps, least slack first, after budget and policy checks."""
        ready, first = tx.lock_ready(now, limit)
        if not ready:
            return [], []
        b = _Batch()
        # What each step would reserve (executors' estimates are pure), to know the budget rows it moves.
        # A run ended or failed now stays so: its steps are skipped and reserve nothing.
        reservations: dict[tuple[str, str], B.Reservation] = {}
        moving: set[str] = set()
        for step in ready:
            run = first.get(step.run_id)
            if run is None or _doomed(run, b):
                continue
            spec = self._step_spec(run, step)
            res = reservations[(run.id, step.step_id)] = B.reservation_for(
                spec, self.executors[step.type].estimate(spec))
            if res.tokens or res.micros or step.type == StepType.AGENT:  # an agent leases its first unit at once
                moving.update(B.scopes_of(run))
        # Lock the budget rows (see _budget_locks), then read the runs again: a concurrent claim of another
        # step of the same run has committed by then, so a run is started (run_started) only once.
        scopes, shared = self._budget_locks(b, first.values(), moving)
        found, runs = tx.lock_for_claim(scopes, shared, list(first.values()))
        self._add_budgets(b, scopes, found)
        b.add_runs(runs)
        claims: list[Claim] = []
        for index, step in enumerate(ready):
            run = b.runs[step.run_id]
            if _doomed(run, b) and not gates.compensating(step):  # failed earlier (a denial): skipped, not started
                self._mark_failed(b, run, run.error_kind)
                continue
            if gates.gate(self, b, run, step, now):  # paused, a breakpoint, or waiting for approval
                continue
            if step.type == StepType.AGENT and not A.holds_worker(self._step_spec(run, step)):
                # its units take the room the rest of the batch leaves
                room = limit - len(claims) - (len(ready) - index - 1)
                claims += agent_loop.advance(self, tx, b, run, step, worker, now, room=room)
                continue
            claim = self._claim_one(tx, b, run, step, worker, now, reservations.get((run.id, step.step_id)))
            if claim is not None:
                claims.append(claim)
        self._finish_failed_runs(tx, b, now)
        b.flush(tx, now)
        return claims, b.events

    def _claim_one(self, tx: Tx, b: _Batch, run: RunRow, step: StepRow, worker: str, now: int,
                   res: B.Reservation | None) -> Claim | None:
        spec = self._step_spec(run, step)
        executor = self.executors[step.type]
        if res is None:
            res = B.reservation_for(spec, executor.estimate(spec))
        rows = self._budgets(tx, b, run)
        attempt = step.attempt + 1
        limit_breach = next((why for r in rows if r.scope != B.FLEET
                             for why in [B.exceeded(r, res.tokens, res.micros)] if why), None)
        caps = self.config.max_inflight_tokens is not None or self.config.max_inflight_cost is not None
        if limit_breach is None and caps:  # without caps nothing is deferred
            fleet = rows[-1]
            cap = B.exceeded(
                BudgetRow(B.FLEET, self.config.max_inflight_tokens,
                          None if self.config.max_inflight_cost is None
                          else to_micros(self.config.max_inflight_cost),
                          fleet.tokens_reserved, 0, fleet.cost_reserved_micros, 0),
                res.tokens, res.micros)
            if cap is not None and (fleet.tokens_reserved or fleet.cost_reserved_micros):
                delay = self.config.defer_delay_ms * 1000
                step.not_before_us = now + delay
                b.step(step)
                b.events.append(step_event(K.STEP_DEFERRED, run, step, step.attempt, now,
                                           reason=f"in-flight cap: {cap}", delay_ms=delay / 1000))
                return None
        step.attempt = attempt
        if limit_breach is not None:
            self._deny(b, run, step, attempt, now, ErrorKind.BUDGET_EXCEEDED, limit_breach, "", worker)
            return None
        inputs, denied, invalid = dict(spec.inputs), None, None
        flows = step.step_id in self._parsed(run).flows or (gates.patched(step) and has_refs(spec.inputs))
        if flows:
            inputs, invalid = self._resolve(tx, run, spec, step)
        if invalid is None and (self.run_spec(run).packs or spec.policy.packs) and not step.spec.get(A.PRECHECKED):
            run_rows = [r for r in rows if r.scope == B.run_scope(run.id)]
            inputs, denied = self._policy(
                b, Hook.PRE, run, step, spec, attempt, inputs, now,
                tokens_reserved=res.tokens, cost_reserved=to_usd(res.micros),
                tokens_used_before=run_rows[0].tokens_used if run_rows else 0,
                cost_used_before=to_usd(run_rows[0].cost_used_micros) if run_rows else 0.0)
        if denied is not None:
            pack = denied.split(":", 1)[0]
            self._deny(b, run, step, attempt, now, ErrorKind.POLICY_DENIED, denied, pack, worker)
            return None
        B.settle(rows, reserve_tokens=res.tokens, reserve_micros=res.micros)
        room = B.headroom(rows)
        tool, provider = executor.target(spec)
        step.status = StepStatus.RUNNING
        step.lease_owner = worker
        step.lease_expires_us = now + self.config.lease_ms * 1000
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

    def _resolve(self, tx: Tx, run: RunRow, spec: StepSpec, step: StepRow) -> tuple[dict[str, Any], str | None]:
        """`spec`'s inputs with their references resolved, or (inputs as written, why they cannot be)."""
        return resolve_step_inputs(self.run_spec(run), spec, {s.step_id: s.output for s in tx.get_steps(run.id)},
                                   gates.errors_of(step))

    def _run_outputs(self, tx: Tx, b: _Batch, run: RunRow) -> dict[str, Any]:
        """The run's `outputs` resolved, from the stored outputs and those this batch has not written yet."""
        outputs = {s.step_id: s.output for s in tx.get_steps(run.id)}
        outputs.update((sid, s.output) for (rid, sid), s in b.steps.items() if rid == run.id)
        return run_outputs(self.run_spec(run), outputs)

    def _agent_claim(self, b: _Batch, run: RunRow, step: StepRow, inputs: dict[str, Any], worker: str,
                     now: int) -> Claim:
        """Lease an agent step to settle it with its coordinator's decision (`inputs`: output or failure).

        Its attempt started when the coordinator first ran it (a retry after a lost lease is a new one)."""
        spec = self._step_spec(run, step)
        if step.first_failure_us is not None:
            step.attempt += 1
            step.started_us = now
            b.events.append(step_event(K.STEP_STARTED, run, step, step.attempt, now, queue_lag_ms=0.0,
                                       worker=worker, inputs={}))
        started = step.started_us or now
        step.status, step.lease_owner = StepStatus.RUNNING, worker
        step.lease_expires_us = now + self.config.lease_ms * 1000
        b.step(step)
        b.new_attempts.append(AttemptRow(run.id, step.step_id, step.attempt, "running", worker, started,
                                         tool=str(spec.inputs.get("model", "")), provider="agent"))
        return Claim(run, step, spec, step.attempt, inputs, B.Reservation(0, 0, "estimate"), worker, started)

    def _deny(self, b: _Batch, run: RunRow, step: StepRow, attempt: int, now: int, kind: ErrorKind,
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
        gates.on_failed(self, b, run, step, str(kind), reason)
        self._mark_failed(b, run, str(kind))

    def _mark_failed(self, b: _Batch, run: RunRow, error_kind: str) -> None:
        if run.status not in TERMINAL_RUN and run.id not in b.failed_runs:
            b.failed_runs.add(run.id)
            run.error_kind = run.error_kind or error_kind
        b.touched_runs.add(run.id)

    # -- completion ----------------------------------------------------------------------------

    def complete(self, tx: Tx, outcomes: Sequence[Outcome], now: int) -> tuple[list[Outcome], list[Envelope]]:
        """Record finished attempts. Returns the outcomes accepted (lease still held) and the events."""
        accepted, _, events = self.complete_and_claim(tx, outcomes, now, "", 0)
        return accepted, events

    def complete_and_claim(self, tx: Tx, outcomes: Sequence[Outcome], now: int, worker: str,
                           room: int) -> tuple[list[Outcome], list[Claim], list[Envelope]]:
        """`complete`, and lease to `worker` (up to `room`) the units of the agents these outcomes woke, in
        the same transaction: an agent's next unit waits for no claim. Returns accepted outcomes, claims
        and events."""
        b = _Batch()
        # Lock every open step of these runs (their dependents and siblings too) before any budget
        # row: a claim holds queued steps while it waits for budget rows, so locking siblings after
        # the budgets (in _finish_failed_runs) would deadlock with it.
        # Then the runs' state now (the rest never changes) and their budget rows: three reads, one round trip.
        keys = {(o.claim.run.id, o.claim.step.step_id) for o in outcomes}
        given = {o.claim.run.id: o.claim.run for o in outcomes}
        moving: set[str] = set()
        for o in outcomes:  # an agent's unit may wake it, and the agent lease its next unit at once
            if _moves_budgets(o) or (room > 0 and A.parent_of(o.claim.step) is not None):
                moving.update(B.scopes_of(o.claim.run))
        scopes, shared = self._budget_locks(b, given.values(), moving)
        agents = sorted({o.claim.run.id for o in outcomes if A.parent_of(o.claim.step) is not None})
        open_rows, runs, found, b.run_steps, b.run_deps = tx.lock_for_completion(
            sorted(given), list(given.values()), scopes, shared, agents)
        b.locked = {(s.run_id, s.step_id): s for s in open_rows if s.run_id in b.run_deps}
        live = {(s.run_id, s.step_id): s for s in open_rows if (s.run_id, s.step_id) in keys}
        b.add_runs(runs)
        self._add_budgets(b, scopes, found)
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
            if self._finish_attempt(tx, b, run, step, o, now) and self._has_dependents(run, step):
                released.append((step.run_id, step.step_id))
        if released:
            claims += self._release(tx, b, released, worker, now, room)
        # Nothing else of these runs changed in the database since their open steps were locked above but
        # released dependents (in the batch now, as any step it changed) and the units agents created (each
        # of those agents is open, and its run with it). Only a run that failed must read them again: its
        # open steps are skipped, and what is written must be their current rows.
        self._finish_failed_runs(tx, b, now, None if released and b.failed_runs else open_rows)
        b.flush(tx, now)
        return accepted, claims, b.events

    def _release(self, tx: Tx, b: _Batch, done: list[tuple[str, str]], worker: str, now: int,
                 room: int = 0) -> list[Claim]:
        """Queue the dependents of the `done` (run id, step id) steps whose last dependency this was; an
        agent they wake leases its next units to `worker` at once, up to `room`. Returns those claims."""
        claims: list[Claim] = []
        here = [k for k in done if k[0] in b.run_deps]
        there = [k for k in done if k[0] not in b.run_deps]
        for dep in sorted(self._release_here(b, here) + (tx.release_dependents(there) if there else []),
                          key=lambda s: (s.run_id, s.step_id)):
            run = b.runs.get(dep.run_id) or tx.get_runs([dep.run_id])[dep.run_id]
            b.runs[run.id] = run
            if _doomed(run, b):
                continue
            self._queue(b, run, dep, now, not_before=now)
            if dep.type == StepType.AGENT and dep.attempt:  # woken by its units: its next ones, at once
                claims += agent_loop.advance(self, tx, b, run, dep, worker, now, room=room - len(claims),
                                             settle=room > len(claims))
                continue
            b.events.append(step_event(K.STEP_QUEUED, run, dep, 0, now, queue_target_ms=dep.queue_target_ms,
                                       priority_boost=dep.priority_boost))
        return claims

    @staticmethod
    def _release_here(b: _Batch, done: list[tuple[str, str]]) -> list[StepRow]:
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

    def _finish_attempt(self, tx: Tx, b: _Batch, run: RunRow, step: StepRow, o: Outcome, now: int) -> bool:
        """Settle one attempt; True when the step succeeded and its dependents may be released."""
        spec, attempt, failure = o.claim.spec, o.claim.attempt, o.failure
        result = o.result
        if o.claim.invalid is not None:  # never executed: its inputs did not resolve
            result, failure = None, StepFailure(ErrorKind.VALIDATION, o.claim.invalid)
        if result is not None:
            output, denied = self._policy(b, Hook.POST, run, step, spec, attempt, dict(result.output), now)
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
        rows = self._budgets(tx, b, run)
        B.settle(rows, reserve_tokens=-res.tokens, reserve_micros=-res.micros,
                 use_tokens=used_tokens, use_micros=used_micros)
        room = B.headroom(rows)
        duration_ms = (o.finished_us - o.claim.started_us) / 1000
        tool = (result.tool if failure is None and result else failure.tool if failure else "") or ""
        provider = (result.provider if failure is None and result else failure.provider if failure else "") or ""
        defaults = self.executors[step.type].target(spec)
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
            return self._succeed(b, run, step, spec, result, o, used_tokens, used_micros, duration_ms, now)
        assert failure is not None
        return self._fail(b, run, step, spec, failure, o.finished_us, used_tokens, used_micros, duration_ms, now)

    def _succeed(self, b: _Batch, run: RunRow, step: StepRow, spec: StepSpec, result: ExecutionResult,
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
        return not _doomed(run, b)

    def _fail(self, b: _Batch, run: RunRow, step: StepRow, spec: StepSpec, failure: StepFailure,
              finished_us: int, tokens: int, micros: int, duration_ms: float, now: int) -> bool:
        """Record a failed attempt: retry it, or end the step. True when an agent's tool call ended:
        its agent answers the model with the error (a guardrail or budget denial still ends the run)."""
        attempt = step.attempt
        retry = (failure.kind.retriable and attempt < step.max_attempts and not A.held(step)
                 and (not _doomed(run, b) or gates.compensating(step)))
        step.first_failure_us = step.first_failure_us or finished_us
        step.error_kind = str(failure.kind)
        error = failure.message[:_SCAN_CHARS]
        kinds = self._redacts(run, step.step_id)
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
            self._queue(b, run, step, now, not_before=now + backoff_us)
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
            return not _doomed(run, b)
        gates.on_failed(self, b, run, step, str(failure.kind), error[:ERROR_CHARS])
        self._mark_failed(b, run, str(failure.kind))
        return False

    # -- run status ----------------------------------------------------------------------------

    def _finish_failed_runs(self, tx: Tx, b: _Batch, now: int, open_rows: list[StepRow] | None = None) -> None:
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
                run.outputs = self._run_outputs(tx, b, run) if self.run_spec(run).outputs else {}
            extra: dict[str, Any] = {"error_kind": run.error_kind} if failed else {"outputs": run.outputs}
            b.events.append(run_event(K.RUN_FAILED if failed else K.RUN_SUCCEEDED, run, now,
                                      duration_ms=(now - run.created_us) / 1000,
                                      queue_target_ms=run.queue_target_ms, **extra))

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
        b = _Batch()
        gates.expire(self, tx, b, now, limit)  # approval waits past their deadline
        if b.runs:
            self._finish_failed_runs(tx, b, now)
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
        b = _Batch()
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

