"""Conversions between domain rows and the column tuples both SQL stores use."""

from __future__ import annotations

from typing import Any

from fleetforge.domain.jsontext import compact, parse
from fleetforge.domain.models import BudgetRow, RunRow, RunStatus, StepRow, StepStatus, StepType
from fleetforge.ports.store import AttemptRow, DecisionRow, RunOrigin

__all__ = [
    "attempt_finish_params",
    "attempt_from_row",
    "attempt_params",
    "budget_from_row",
    "budget_params",
    "decision_from_row",
    "decision_params",
    "origin_params",
    "prefix_end",
    "run_from_row",
    "run_params",
    "run_update_params",
    "run_with_state",
    "step_from_row",
    "step_params",
    "step_update_params",
]


_MAX_CHAR = 0x10FFFF


def prefix_end(prefix: str) -> str:
    """The least string above every string that starts with `prefix`, in code-point (= UTF-8 byte) order.

    With `prefix` made only of U+10FFFF (or empty) there is none: the result is then above every id.
    """
    head = prefix.rstrip(chr(_MAX_CHAR))
    if not head:
        return chr(_MAX_CHAR) * (len(prefix) + 64)
    nxt = ord(head[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored: the next storable code point
        nxt = 0xE000
    return head[:-1] + chr(nxt)


def _dump(value: Any) -> str:
    return compact(value)  # the text of json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _load(value: Any) -> Any:
    return parse(value) if isinstance(value, str) else value


def run_params(r: RunRow) -> tuple[Any, ...]:
    return (r.id, r.workspace, r.app, str(r.status), _dump(r.spec), r.seed, r.slo_tier, r.queue_target_ms,
            r.trace_id, r.created_us, r.started_us, r.finished_us, r.error_kind, _dump(r.labels),
            None if r.outputs is None else _dump(r.outputs))


def run_update_params(r: RunRow) -> tuple[Any, ...]:
    """What `update_run` writes (outputs only when set: a NULL keeps the stored ones)."""
    return (str(r.status), r.started_us, r.finished_us, r.error_kind, None if r.outputs is None else _dump(r.outputs),
            r.id)


def run_from_row(row: Any) -> RunRow:
    (id_, ws, app, status, spec, seed, tier, target, trace, created, started, finished, err, labels, outputs) = row
    return RunRow(id=id_, workspace=ws, app=app, status=RunStatus(status), spec=_load(spec), seed=seed,
                  slo_tier=tier, queue_target_ms=target, trace_id=trace, created_us=created,
                  started_us=started, finished_us=finished, error_kind=err, labels=_load(labels),
                  outputs=None if outputs is None else _load(outputs))


def run_with_state(r: RunRow, status: Any, started_us: int | None, finished_us: int | None,
                   error_kind: str) -> RunRow:
    """A copy of `r` with the fields `update_runs` writes replaced by those read from a row."""
    return RunRow(r.id, r.workspace, r.app, _RUN_STATUSES.get(status) or RunStatus(status), r.spec, r.seed,
                  r.slo_tier, r.queue_target_ms, r.trace_id, r.created_us, started_us, finished_us, error_kind,
                  r.labels, r.outputs)


_RUN_STATUSES: dict[Any, RunStatus] = {s.value: s for s in RunStatus}


def step_params(s: StepRow) -> tuple[Any, ...]:
    return (s.run_id, s.step_id, str(s.type), str(s.status), _dump(s.spec), s.attempt, s.max_attempts,
            s.deps_remaining, s.due_us, s.ready_us, s.not_before_us, s.queue_target_ms, s.priority_boost,
            s.slo_tier, s.lease_owner, s.lease_expires_us, s.started_us, s.finished_us, s.first_failure_us,
            s.error_kind, None if s.output is None else _dump(s.output))


def step_update_params(s: StepRow) -> tuple[Any, ...]:
    return (str(s.status), s.attempt, s.deps_remaining, s.due_us, s.ready_us, s.not_before_us, s.lease_owner,
            s.lease_expires_us, s.started_us, s.finished_us, s.first_failure_us, s.error_kind,
            None if s.output is None else _dump(s.output), _dump(s.spec), s.run_id, s.step_id)


_STEP_TYPES: dict[Any, StepType] = {t.value: t for t in StepType}
_STEP_STATUSES: dict[Any, StepStatus] = {t.value: t for t in StepStatus}


def step_from_row(row: Any) -> StepRow:
    """A StepRow from a row addressable by column name."""
    output = row["output"]
    kind, status = row["type"], row["status"]
    return StepRow(
        row["run_id"], row["step_id"], _STEP_TYPES.get(kind) or StepType(kind),
        _STEP_STATUSES.get(status) or StepStatus(status), _load(row["spec"]), row["attempt"],
        row["max_attempts"], row["deps_remaining"], row["due_us"], row["ready_us"], row["not_before_us"],
        row["queue_target_ms"], row["priority_boost"], row["slo_tier"], row["lease_owner"],
        row["lease_expires_us"], row["started_us"], row["finished_us"], row["first_failure_us"],
        row["error_kind"], None if output is None else _load(output),
    )


def budget_params(b: BudgetRow) -> tuple[Any, ...]:
    return (b.scope, b.tokens_limit, b.cost_limit_micros, b.tokens_reserved, b.tokens_used,
            b.cost_reserved_micros, b.cost_used_micros)


def budget_from_row(row: Any) -> BudgetRow:
    return BudgetRow(*row)


def attempt_params(a: AttemptRow) -> tuple[Any, ...]:
    return (a.run_id, a.step_id, a.attempt, a.status, a.worker, a.started_us, a.finished_us, a.error_kind,
            a.tokens_reserved, a.tokens_used, a.cost_reserved_micros, a.cost_used_micros, a.input_tokens,
            a.output_tokens, a.cached_tokens, a.tool, a.provider, a.model)


def attempt_finish_params(a: AttemptRow) -> tuple[Any, ...]:
    return (a.status, a.finished_us, a.error_kind, a.tokens_used, a.cost_used_micros, a.input_tokens,
            a.output_tokens, a.cached_tokens, a.tool, a.provider, a.model, a.run_id, a.step_id, a.attempt)


def attempt_from_row(row: Any) -> AttemptRow:
    return AttemptRow(*row)


def decision_params(d: DecisionRow) -> tuple[Any, ...]:
    return (d.id, d.run_id, d.step_id, d.attempt, d.pack, d.hook, d.effect, d.reason, d.at_us, d.wait_us)


def decision_from_row(row: Any) -> DecisionRow:
    return DecisionRow(*row)


def origin_params(o: RunOrigin) -> tuple[Any, ...]:
    return (o.run_id, o.kind, o.source_run, o.source_step, o.actor, o.created_us)
