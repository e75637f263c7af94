"""Fork a run: a new run that takes the recorded results of the steps before a step and runs the rest.

The fork's steps before `--from` are stored as they were recorded (status and output) and marked
reused: no attempt, no budget, no executor call, one `step_reused` event each. `--from` may name an
agent turn (`<agent>.t<k>`): the agent's earlier turns and their tool calls are copied the same way and
the agent, rebuilding its conversation from its committed children (core/agent.py), goes on from turn k.
See docs/runtime.md, "Fork and replay".
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fleetforge.core import agent as A
from fleetforge.core.events import run_event, step_event
from fleetforge.core.policies.pii import redact_spec
from fleetforge.core.runtime import Runtime
from fleetforge.core.submit import build_run
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.domain.models import RunRow, RunSpec, StepRow, StepStatus, StepType
from fleetforge.domain.names import EventKind as K
from fleetforge.domain.spec import spec_to_dict
from fleetforge.ports.store import RunOrigin, Tx

__all__ = ["REUSED_FROM", "Planted", "fork_run", "plant_run", "reused_source"]

REUSED_FROM: Final = "reused_from"
"""Key of a step row's spec: the run whose recorded result the step took instead of running."""
_TURN: Final = re.compile(r"(?P<agent>.+)\.t(?P<turn>[1-9][0-9]*)")


def reused_source(row: StepRow) -> str | None:
    """The run `row`'s result was taken from, None for a step that ran (or will) in its own run."""
    source = row.spec.get(REUSED_FROM) if row.spec else None
    return source if isinstance(source, str) else None


@dataclass(frozen=True, slots=True)
class Planted:
    """A run stored with some steps taken from a record: its row and the events written."""

    run: RunRow
    events: list[Envelope]


def _turn_of(step_id: str, agent: str) -> int:
    """The turn number of an agent unit id (`<agent>.t<k>` or `<agent>.t<k>.c<id>`)."""
    head = step_id[len(agent) + 2:]
    return int(head.split(".", 1)[0])


def _downstream(spec: RunSpec, roots: Iterable[str]) -> set[str]:
    """`roots` and every step of `spec` that depends on one of them, directly or not."""
    dependents: dict[str, list[str]] = {}
    for s in spec.steps:
        for d in s.depends_on:
            dependents.setdefault(d, []).append(s.id)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            todo.extend(dependents.get(sid, ()))
    return seen


def plant_run(runtime: Runtime, tx: Tx, spec: RunSpec, spec_dict: dict[str, Any], now: int,
              reused: Mapping[str, StepRow], *, run_id: str | None = None) -> Planted:
    """Store a run of `spec` in which the steps in `reused` (rows of a recorded run, spec steps and agent
    units) keep their recorded status and output and are marked reused; the others run as submitted.

    Dependencies on reused steps count as met. One `step_reused` event per reused row."""
    run, rows, deps = build_run(spec, spec_dict, now, run_id)
    kept = {s.id for s in spec.steps} & reused.keys()
    for row in rows:
        if row.step_id in kept:
            _take(row, reused[row.step_id], now)
        else:
            row.deps_remaining = sum(1 for rid, sid, d in deps if sid == row.step_id and d not in kept)
            row.status = StepStatus.QUEUED if row.deps_remaining == 0 else StepStatus.PENDING
    deps = [edge for edge in deps if edge[2] not in kept]
    units = [_unit_copy(run.id, r, now) for sid, r in reused.items() if sid not in kept]
    events = runtime.scheduler.submit(tx, run, rows, deps, spec, now)
    if units:
        tx.insert_steps(units, [])
    extra = [step_event(K.STEP_REUSED, run, r, 0, now, status=str(r.status), forked_from=reused_source(r) or "")
             for r in [*(r for r in rows if r.step_id in kept), *units]]
    tx.append_events(extra)
    return Planted(run, events + extra)


def _take(row: StepRow, recorded: StepRow, now: int) -> None:
    row.status, row.output, row.error_kind = recorded.status, copy.deepcopy(recorded.output), recorded.error_kind
    row.spec = {**copy.deepcopy(recorded.spec), REUSED_FROM: reused_source(recorded) or recorded.run_id}
    row.deps_remaining, row.attempt, row.finished_us = 0, 0, now


def _unit_copy(run_id: str, recorded: StepRow, now: int) -> StepRow:
    row = copy.copy(recorded)
    row.run_id, row.lease_owner, row.lease_expires_us, row.started_us = run_id, "", 0, None
    row.due_us = row.ready_us = row.not_before_us = now
    _take(row, recorded, now)
    return row


def _plan(spec: RunSpec, rows: dict[str, StepRow], from_step: str, run_id: str) -> dict[str, StepRow]:
    """The recorded rows a fork from `from_step` reuses: spec steps, and an agent's earlier units."""
    ids = [s.id for s in spec.steps]
    head, turn = from_step, 0
    m = _TURN.fullmatch(from_step)
    if from_step not in ids and m is not None and from_step in rows:
        agent = next((s for s in spec.steps if s.id == m["agent"] and s.type == StepType.AGENT), None)
        if agent is not None:
            head, turn = agent.id, int(m["turn"])
    if head not in ids:
        units = sorted(sid for sid, r in rows.items() if A.unit_of(r) == "turn")
        raise SpecError([f"--from: got {from_step!r}, expected a step of run {run_id}: {', '.join(ids)}"
                         + (f", or an agent turn it recorded: {', '.join(units)}" if units else "")])
    failed = [sid for sid in ids if sid not in rows or rows[sid].status is not StepStatus.SUCCEEDED]
    redo = _downstream(spec, [head, *failed])
    reused = {sid: rows[sid] for sid in ids if sid not in redo}
    if turn:
        reused.update((sid, r) for sid, r in rows.items()
                      if A.parent_of(r) == head and _turn_of(sid, head) < turn and r.status in _SETTLED)
    return reused


_SETTLED: Final = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.DENIED})


def _patched(data: dict[str, Any], patch: Mapping[str, Any], reused: Mapping[str, StepRow]) -> dict[str, Any]:
    """The run spec `data` with the inputs of the patched steps replaced (checked: re-executed steps)."""
    out = copy.deepcopy(data)
    steps = {s.get("id"): s for s in out.get("steps", []) if isinstance(s, dict)}
    problems = []
    for sid, inputs in patch.items():
        if sid not in steps:
            problems.append(f"--patch: got step {sid!r}, expected a step of the run: {', '.join(map(str, steps))}")
        elif sid in reused:
            problems.append(f"--patch: step {sid!r} is reused from the record (it comes before --from); "
                            "patch a step at or after --from")
        elif not isinstance(inputs, Mapping):
            problems.append(f"--patch {sid}: got {type(inputs).__name__}, expected a JSON object of step inputs")
        else:
            steps[sid]["inputs"] = copy.deepcopy(dict(inputs))
    if problems:
        raise SpecError(problems)
    return out


def fork_run(runtime: Runtime, run_id: str, from_step: str, *, patch: Mapping[str, Any] | None = None,
             actor: str = "") -> str:
    """Store a fork of `run_id` that re-executes `from_step` and everything after it; returns its id.

    `patch` maps step ids (re-executed ones) to their new inputs, validated as at submit. Raises
    NotFoundError for an unknown run and SpecError for an unknown step or a bad patch; nothing is
    stored then. The fork and its origin (`run_origins`, `run_forked` on both runs) commit together."""
    store = runtime.store
    source = store.get_run(run_id)
    if source is None:
        raise NotFoundError(f"no run {run_id!r}; list runs with `fleetforge runs list`")
    spec = runtime.scheduler.run_spec(source)
    rows = {r.step_id: r for r in store.get_steps(run_id)}
    reused = _plan(spec, rows, from_step, run_id)
    data = _patched(source.spec, patch or {}, reused)
    try:
        parsed = redact_spec(runtime.parse(data))
    except SpecError as exc:
        raise SpecError([f"--patch: {p}" for p in exc.problems]) from None
    now = runtime.clock.now_us()
    with store.transaction() as tx:
        planted = plant_run(runtime, tx, parsed, spec_to_dict(parsed), now, reused)
        fork = planted.run
        tx.insert_origin(RunOrigin(fork.id, "fork", source.id, from_step, actor, now))
        detail = {"forked_from": source.id, "fork": fork.id, "from_step": from_step, "actor": actor,
                  "reused": len(reused), "patched": sorted(patch or {})}
        linked = [run_event(K.RUN_FORKED, fork, now, **detail), run_event(K.RUN_FORKED, source, now, **detail)]
        tx.append_events(linked)
    if runtime.observer is not None:
        runtime.observer(planted.events + linked)
    return fork.id
