"""Replay recorded runs: execute them again with every llm, tool and http result taken from the record.

The replay runs in a scratch store the caller gives (never the fleet's: the fleet's analytics see
nothing of it), with the run's stored spec, seed and id. `llm`, `tool` and `http` steps go to a
`RecordedExecutor`, which answers each attempt with the recorded outcome (output, failure kind, usage)
and fails loudly (`validation`) when the replay asks for an attempt the record does not have, or asks
with other inputs than those recorded. Everything else (guardrails, budgets, references, retries, agent
loops) runs as it does live; people's answers, passed breakpoints and resume patches come from the
record (core/replay_answers.py); `replay_report.compare` then holds the result against the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fleetforge.core.config import RuntimeConfig
from fleetforge.core.fork import plant_run, reused_source
from fleetforge.core.gates import errors_of
from fleetforge.core.pricing import PriceTable
from fleetforge.core.replay_answers import OperatorDesk, plant_operators
from fleetforge.core.replay_report import ReplayReport, RunRecord, Tolerance, compare
from fleetforge.core.runtime import Runtime
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.domain.models import TERMINAL_RUN, ErrorKind, StepSpec, StepStatus, StepType
from fleetforge.domain.money import to_usd
from fleetforge.domain.spec import spec_to_dict
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor, StepFailure, Usage
from fleetforge.ports.policy import PolicyPack
from fleetforge.ports.store import AttemptRow, Store

__all__ = ["RECORDED_TYPES", "RecordedExecutor", "load_record", "replay_runs"]

RECORDED_TYPES: Final = (StepType.LLM, StepType.TOOL, StepType.HTTP)
"""Step types whose results come from the record (the others run their own, internal, logic)."""
_ERROR_KINDS: Final = {k.value: k for k in ErrorKind}


def load_record(store: Store, run_id: str) -> RunRecord:
    """The run `run_id` as `store` keeps it; NotFoundError when there is none."""
    run = store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id!r}; list runs with `fleetforge runs list`")
    attempts: dict[str, list[AttemptRow]] = {}
    for a in sorted(store.get_attempts(run_id), key=lambda a: (a.step_id, a.attempt)):
        attempts.setdefault(a.step_id, []).append(a)
    return RunRecord(run, {s.step_id: s for s in store.get_steps(run_id)}, attempts, store.get_decisions(run_id))


class RecordedExecutor:
    """Answers llm/tool/http attempts from the record; `inner` (never called) gives estimates and targets,
    so reservations, and the budget decisions they lead to, are the live ones."""

    def __init__(self, inner: Executor, records: Mapping[str, RunRecord], prices: PriceTable | None = None) -> None:
        self.inner = inner
        self.records = records
        self.prices = prices
        self.answered: dict[str, int] = {}
        self.unrecorded: dict[str, list[str]] = {}

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        return self.inner.estimate(step)

    def target(self, step: StepSpec) -> tuple[str, str]:
        return self.inner.target(step)

    def _refuse(self, ctx: ExecutionContext, why: str) -> StepFailure:
        message = f"replay: {ctx.step.id} attempt {ctx.attempt} {why}"
        self.unrecorded.setdefault(ctx.run_id, []).append(message)
        return StepFailure(ErrorKind.VALIDATION, message)

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        record = self.records.get(ctx.run_id)
        row = record.steps.get(ctx.step.id) if record else None
        attempts = record.attempts.get(ctx.step.id, []) if record else []
        attempt = next((a for a in attempts if a.attempt == ctx.attempt), None)
        if row is None or attempt is None or attempt.status not in ("succeeded", "failed"):
            raise self._refuse(ctx, "asks for a call that was not recorded")
        expected = row.spec.get("inputs") if row.spec else None
        if expected is not None and expected != ctx.inputs:
            raise self._refuse(ctx, "asks with other inputs than recorded")
        self.answered[ctx.run_id] = self.answered.get(ctx.run_id, 0) + 1
        cost = to_usd(attempt.cost_used_micros)
        if self.prices is not None and attempt.model:  # the recorded tokens, priced with `prices`
            cost = self.prices.cost(attempt.model, attempt.input_tokens, attempt.cached_tokens, attempt.output_tokens)
        usage = Usage(attempt.input_tokens, attempt.output_tokens, attempt.cached_tokens, cost)
        if attempt.status == "failed":
            kind = _ERROR_KINDS.get(attempt.error_kind, ErrorKind.CRASH)
            message = _failure_message(record, ctx.step.id) if attempt is attempts[-1] else None
            raise StepFailure(kind, message or f"recorded failure ({attempt.error_kind})", usage=usage,
                              tool=attempt.tool, provider=attempt.provider)
        if row.status is not StepStatus.SUCCEEDED or row.output is None:
            raise self._refuse(ctx, "succeeded in the record, but its output is not kept")
        return ExecutionResult(output=dict(row.output), usage=usage, tool=attempt.tool,
                               provider=attempt.provider, model=attempt.model)


def _failure_message(record: RunRecord | None, step_id: str) -> str | None:
    """The recorded message of `step_id`'s final failure, kept by the compensation step it queued."""
    for row in record.steps.values() if record else ():
        error = errors_of(row).get(step_id)
        if error is not None:
            return str(error.get("message", ""))
    return None


async def replay_runs(records: Sequence[RunRecord], scratch: Store, *, executors: Mapping[str, Executor],
                      packs: Mapping[str, PolicyPack], tolerance: Tolerance = Tolerance(),
                      prices: PriceTable | None = None, timeout_s: float = 300.0) -> list[ReplayReport]:
    """Replay `records` together in `scratch` (a fresh, migrated store) and compare each with its record.

    `executors` are the live ones: llm/tool/http are wrapped in a `RecordedExecutor` (their `execute` is
    never called); the others (the agent coordinator) run as they are. Steps a fork took from an earlier
    run are planted as reused again, so a fork replays as it ran. With `prices`, each LLM attempt's cost is
    its recorded tokens priced with them (what the run would cost at those prices: the cost drift)."""
    active = [f"{r.run.id} is {r.run.status}" for r in records if r.run.status not in TERMINAL_RUN]
    if active:
        raise SpecError([f"run: {a}, expected a finished run (a replay holds the whole record against the "
                         "replay): wait for it with `fleetforge runs tail RUN`" for a in active])
    by_id = {r.run.id: r for r in records}
    wrapped: dict[str, Any] = dict(executors)
    recorded: list[RecordedExecutor] = []
    for kind in RECORDED_TYPES:
        if kind in wrapped:
            recorded.append(RecordedExecutor(wrapped[kind], by_id, prices))
            wrapped[kind] = recorded[-1]
    runtime = Runtime(scratch, executors=wrapped, packs=packs, config=RuntimeConfig(lease_ms=600_000))
    for record in records:
        spec = runtime.scheduler.run_spec(record.run)
        reused = {sid: row for sid, row in record.steps.items() if reused_source(row) is not None}
        with scratch.transaction() as tx:
            plant_run(runtime, tx, spec, spec_to_dict(spec), runtime.clock.now_us(), reused, run_id=record.run.id)
            plant_operators(tx, record)
    worker = runtime.worker("replay", concurrency=32, poll_interval_s=0.005)
    desk = OperatorDesk(runtime, records)
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.run(stop=stop, until_idle=True))
    answering = asyncio.ensure_future(desk.serve(task))
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    if not done:  # a run that waits for something the replay cannot give: report where it stands
        stop.set()
        await task
    await answering
    reports = []
    for record in records:
        again = load_record(scratch, record.run.id)
        report = compare(record, again.run, again.steps, again.attempts, tolerance)
        report.calls_answered = sum(r.answered.get(record.run.id, 0) for r in recorded)
        report.calls_unrecorded = [m for r in recorded for m in r.unrecorded.get(record.run.id, [])]
        report.approvals_answered = desk.answered.get(record.run.id, 0)
        report.differences.extend(desk.differences.get(record.run.id, []))
        if not done:
            report.differences.append(f"the replay did not finish within {timeout_s:g}s")
        reports.append(report)
    return reports
