"""The dashboard's run drill-down: a run's steps with their inputs and outputs, and each agent's transcript.

Everything comes from the state store as stored (a redacting run's data is redacted at rest; nothing is
un-redacted). An agent's units are shown under their agent, turn by turn (core/transcript.py), with
their ledger usage and guardrail decisions. Large values are cut to `PAYLOAD_BYTES`, with their size.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from fleetforge.core.agent import parent_of
from fleetforge.core.dataflow import has_refs
from fleetforge.core.transcript import CallView, Transcript, TurnView, children_of, transcript
from fleetforge.domain.models import StepRow, StepSpec, StepType
from fleetforge.ports.store import AttemptRow, DecisionRow, Store

__all__ = ["PAYLOAD_BYTES", "payload", "run_view", "ts"]

PAYLOAD_BYTES: Final = 8192
"""Bytes of one value (inputs, output, message, arguments, result) the page receives at most."""


def ts(us: int | None) -> str:
    """Microseconds since the epoch as 'YYYY-MM-DD HH:MM:SS' UTC; '' for None."""
    return "" if us is None else datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def payload(value: Any, limit: int = PAYLOAD_BYTES) -> dict[str, Any]:
    """`value` as text for the page (a string as itself, anything else as indented JSON), cut after `limit`
    UTF-8 bytes: {"text", "bytes" (the whole text's size), "truncated"}."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    raw = text.encode()
    if len(raw) <= limit:
        return {"text": text, "bytes": len(raw), "truncated": False}
    return {"text": raw[:limit].decode(errors="ignore"), "bytes": len(raw), "truncated": True}


def _json_text(text: str) -> dict[str, Any]:
    """A JSON document written compactly (tool arguments, tool answers), shown indented when it parses."""
    try:
        return payload(json.loads(text))
    except ValueError:
        return payload(text)


def _usage(attempts: Iterable[AttemptRow]) -> dict[str, dict[str, Any]]:
    """Per step id: attempts, tokens (input/output/total), cost and model, summed over the ledger rows."""
    out: dict[str, dict[str, Any]] = {}
    for a in attempts:
        u = out.setdefault(a.step_id, {"attempts": 0, "input_tokens": 0, "output_tokens": 0, "tokens": 0,
                                       "cost_micros": 0, "model": ""})
        u["attempts"] += 1
        u["input_tokens"] += a.input_tokens
        u["output_tokens"] += a.output_tokens
        u["tokens"] += a.tokens_used
        u["cost_micros"] += a.cost_used_micros
        u["model"] = a.model or u["model"]
    for u in out.values():
        u["cost"] = u.pop("cost_micros") / 1e6
    return out


def _decision(d: DecisionRow) -> dict[str, Any]:
    return {"step_id": d.step_id, "attempt": d.attempt, "pack": d.pack, "hook": d.hook, "effect": d.effect,
            "reason": d.reason}


class _View:
    """What one drill-down request reads: the run's steps, ledger usage and decisions, by step id."""

    def __init__(self, steps: list[StepRow], attempts: list[AttemptRow], decisions: list[DecisionRow]) -> None:
        self.steps = steps
        self.usage = _usage(attempts)
        self.decisions: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for d in decisions:
            self.decisions[d.step_id].append(_decision(d))

    def unit(self, step_id: str, row: StepRow | None) -> dict[str, Any]:
        """Status, ledger usage and decisions of an agent's unit (the same keys for a turn and a call)."""
        return {"step_id": step_id, "status": str(row.status) if row else "not stored",
                "error_kind": row.error_kind if row else "", "usage": self.usage.get(step_id),
                "decisions": self.decisions.get(step_id, [])}

    def call(self, c: CallView) -> dict[str, Any]:
        return {**self.unit(c.step_id, c.row), "call_id": c.call_id, "name": c.name,
                "arguments": _json_text(c.arguments),
                "result": None if c.answer is None else _json_text(c.answer)}

    def turn(self, t: TurnView) -> dict[str, Any]:
        text = t.message.get("content") if t.message else None
        return {**self.unit(t.step_id, t.row), "turn": t.turn,
                "message": None if t.message is None else payload(text if isinstance(text, str) else ""),
                "calls": [self.call(c) for c in t.calls]}

    def transcript(self, tr: Transcript) -> dict[str, Any]:
        return {"prompt": [{"role": str(m.get("role", "")), "content": payload(m.get("content") or "")}
                           for m in tr.prompt],
                "turns": [self.turn(t) for t in tr.turns],
                "final": None if tr.final is None else payload(tr.final), "failure": tr.failure}


def _spec_inputs(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Step id -> inputs as written in a stored run spec."""
    steps = spec.get("steps")
    out: dict[str, dict[str, Any]] = {}
    for s in steps if isinstance(steps, list) else []:
        if isinstance(s, dict):
            inputs = s.get("inputs")
            out[str(s.get("id"))] = inputs if isinstance(inputs, dict) else {}
    return out


def _step(view: _View, row: StepRow, written: dict[str, Any]) -> dict[str, Any]:
    """A step of the run spec: inputs as the executor received them (resolved) once claimed, its output,
    usage and decisions, and for an agent its transcript."""
    stored = row.spec.get("inputs") if row.spec else None
    resolved = isinstance(stored, dict)
    out: dict[str, Any] = {
        "step_id": row.step_id, "type": str(row.type), "status": str(row.status), "attempts": row.attempt,
        "error_kind": row.error_kind, "started_at": ts(row.started_us), "finished_at": ts(row.finished_us),
        "inputs": payload(stored if resolved else written),
        "inputs_note": "" if resolved or not has_refs(written) else
        "as written: the references resolve when the step is claimed",
        "output": None if row.output is None else payload(row.output),
        "usage": view.usage.get(row.step_id), "decisions": view.decisions.get(row.step_id, []),
    }
    if row.type == StepType.AGENT:
        children = children_of(row.step_id, view.steps)
        tr = transcript(StepSpec(id=row.step_id, type=row.type, inputs=written), children)
        out["units"] = len(children)
        out["units_usage"] = {key: sum(u[key] for c in children if (u := view.usage.get(c)))
                              for key in ("input_tokens", "output_tokens", "tokens", "cost")}
        out["transcript"] = view.transcript(tr)
    return out


def run_view(store: Store, run_id: str) -> dict[str, Any] | None:
    """The drill-down of run `run_id` (None when there is no such run)."""
    run = store.get_run(run_id)
    if run is None:
        return None
    attempts, decisions = store.get_attempts(run_id), store.get_decisions(run_id)
    view = _View(store.get_steps(run_id), attempts, decisions)
    written = _spec_inputs(run.spec)
    units = {s.step_id for s in view.steps if parent_of(s) is not None}
    budget = run.spec.get("budget") or {}
    return {
        "run_id": run.id, "workspace": run.workspace, "app": run.app, "status": str(run.status),
        "slo_tier": run.slo_tier, "trace_id": run.trace_id, "error_kind": run.error_kind,
        "created_at": ts(run.created_us), "finished_at": ts(run.finished_us),
        "inputs": None if run.spec.get("inputs") is None else payload(run.spec["inputs"]),
        "outputs": payload(run.outputs) if run.outputs else None,
        "budget": {"tokens_limit": budget.get("tokens"), "cost_limit": budget.get("cost"),
                   "tokens_used": sum(a.tokens_used for a in attempts),
                   "cost_used": sum(a.cost_used_micros for a in attempts) / 1e6},
        "steps": [_step(view, s, written.get(s.step_id, {})) for s in view.steps if s.step_id not in units],
        "attempts": [{"step_id": a.step_id, "attempt": a.attempt, "status": a.status,
                      "error_kind": a.error_kind, "tokens_reserved": a.tokens_reserved,
                      "tokens_used": a.tokens_used, "cost_used": a.cost_used_micros / 1e6,
                      "tool": a.tool, "provider": a.provider, "model": a.model}
                     for a in attempts if a.step_id not in units],
        "policy_decisions": [_decision(d) for d in decisions if d.step_id not in units],
    }
