"""What a replay found: for each step, whether the replay reproduced the record, and the token/cost drift.

Pure comparison of two sets of rows (the record and the replay); see core/replay.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from fleetforge.core.fork import reused_source
from fleetforge.domain.models import RunRow, StepRow
from fleetforge.domain.money import to_micros, to_usd
from fleetforge.ports.store import AttemptRow, DecisionRow

__all__ = ["EXIT_DRIFT", "ReplayReport", "RunRecord", "StepReport", "Tolerance", "compare"]

EXIT_DRIFT: Final = 5
"""Exit code of `fleetforge runs replay` when a run was not reproduced or drifted past the tolerance."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far the replay's tokens and cost (each summed over the run, absolute) may drift from the record."""

    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as the store recorded it: the run, its steps (agent units included), its ledger and its
    guardrail decisions (people's answers to approval waits among them)."""

    run: RunRow
    steps: dict[str, StepRow]
    attempts: dict[str, list[AttemptRow]]  # by step id, in attempt order
    decisions: list[DecisionRow] = field(default_factory=list)


@dataclass(slots=True)
class StepReport:
    """One step (or agent unit): recorded vs replayed status, attempts, tokens and cost, and what differs."""

    step_id: str
    type: str
    recorded: str  # status, "" when the record has no such step
    replayed: str  # status, "" when the replay did not reach it
    attempts_recorded: list[str]  # "status" or "status:error_kind" per attempt
    attempts_replayed: list[str]
    tokens_recorded: int
    tokens_replayed: int
    cost_recorded_micros: int
    cost_replayed_micros: int
    reused: bool = False  # taken from an earlier run's record in both (a fork's step)
    differences: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "type": self.type, "recorded": self.recorded, "replayed": self.replayed,
                "reproduced": self.reproduced, "reused": self.reused,
                "attempts_recorded": self.attempts_recorded, "attempts_replayed": self.attempts_replayed,
                "tokens_recorded": self.tokens_recorded, "tokens_replayed": self.tokens_replayed,
                "cost_recorded_usd": to_usd(self.cost_recorded_micros),
                "cost_replayed_usd": to_usd(self.cost_replayed_micros), "differences": self.differences}


@dataclass(slots=True)
class ReplayReport:
    """A run's replay against its record and the tolerance; `ok` decides the exit code."""

    run_id: str
    status_recorded: str
    status_replayed: str
    steps: list[StepReport]
    tolerance: Tolerance
    differences: list[str] = field(default_factory=list)  # of the run itself (status, outputs)
    calls_answered: int = 0  # llm/tool/http calls answered from the record
    calls_unrecorded: list[str] = field(default_factory=list)  # calls the replay asked for that were not recorded
    approvals_answered: int = 0  # approval waits answered with the record's decisions

    @property
    def tokens_recorded(self) -> int:
        return sum(s.tokens_recorded for s in self.steps)

    @property
    def tokens_replayed(self) -> int:
        return sum(s.tokens_replayed for s in self.steps)

    @property
    def token_drift(self) -> int:
        return self.tokens_replayed - self.tokens_recorded

    @property
    def cost_drift_micros(self) -> int:
        return sum(s.cost_replayed_micros - s.cost_recorded_micros for s in self.steps)

    @property
    def reproduced(self) -> bool:
        """Same steps, same attempts, same calls with the same inputs, same outputs, same run status."""
        return not self.differences and not self.calls_unrecorded and all(s.reproduced for s in self.steps)

    @property
    def within_tolerance(self) -> bool:
        return (abs(self.token_drift) <= self.tolerance.tokens
                and abs(self.cost_drift_micros) <= to_micros(self.tolerance.cost_usd))

    @property
    def ok(self) -> bool:
        return self.reproduced and self.within_tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "ok": self.ok, "reproduced": self.reproduced,
                "within_tolerance": self.within_tolerance,
                "status_recorded": self.status_recorded, "status_replayed": self.status_replayed,
                "tokens_recorded": self.tokens_recorded, "tokens_replayed": self.tokens_replayed,
                "token_drift": self.token_drift, "cost_drift_usd": to_usd(self.cost_drift_micros),
                "tolerance": {"tokens": self.tolerance.tokens, "cost_usd": self.tolerance.cost_usd},
                "calls_answered": self.calls_answered, "calls_unrecorded": self.calls_unrecorded,
                "approvals_answered": self.approvals_answered,
                "differences": self.differences, "steps": [s.to_dict() for s in self.steps]}


def _outcomes(attempts: list[AttemptRow]) -> list[str]:
    return [a.status + (f":{a.error_kind}" if a.error_kind else "") for a in attempts]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _inputs(row: StepRow) -> Any:
    """What the step's executor received, when its row keeps it (references resolved, agent units)."""
    return None if not row.spec else row.spec.get("inputs")


def _step(sid: str, rec: StepRow | None, rep: StepRow | None, rec_attempts: list[AttemptRow],
          rep_attempts: list[AttemptRow]) -> StepReport:
    row = rec or rep
    assert row is not None
    report = StepReport(
        sid, str(row.type), str(rec.status) if rec else "", str(rep.status) if rep else "",
        _outcomes(rec_attempts), _outcomes(rep_attempts), sum(a.tokens_used for a in rec_attempts),
        sum(a.tokens_used for a in rep_attempts), sum(a.cost_used_micros for a in rec_attempts),
        sum(a.cost_used_micros for a in rep_attempts),
        reused=rec is not None and reused_source(rec) is not None)
    diff = report.differences
    if rec is None or rep is None:
        diff.append("not in the record" if rec is None else "not reached by the replay")
        return report
    if rec.status != rep.status:
        diff.append(f"status: recorded {rec.status}, replayed {rep.status}")
    if report.attempts_recorded != report.attempts_replayed:
        diff.append(f"attempts: recorded {report.attempts_recorded}, replayed {report.attempts_replayed}")
    if _json(_inputs(rec)) != _json(_inputs(rep)):
        diff.append("inputs (tool call arguments, resolved references) differ from the record")
    if _json(rec.output) != _json(rep.output):
        diff.append("output differs from the record")
    return report


def compare(record: RunRecord, replayed: RunRow | None, steps: dict[str, StepRow],
            attempts: dict[str, list[AttemptRow]], tolerance: Tolerance) -> ReplayReport:
    """Step by step, the replay (`replayed`, `steps`, `attempts`) against `record`."""
    ids = list(record.steps) + [sid for sid in steps if sid not in record.steps]
    reports = [_step(sid, record.steps.get(sid), steps.get(sid), record.attempts.get(sid, []),
                     attempts.get(sid, [])) for sid in ids]
    report = ReplayReport(record.run.id, str(record.run.status), str(replayed.status) if replayed else "",
                          reports, tolerance)
    if replayed is None:
        report.differences.append("the replay did not store the run")
    else:
        if replayed.status != record.run.status:
            report.differences.append(f"run status: recorded {record.run.status}, replayed {replayed.status}")
        if _json(replayed.outputs or {}) != _json(record.run.outputs or {}):
            report.differences.append("run outputs differ from the record")
    return report
