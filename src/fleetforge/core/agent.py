"""The `agent` step: a coordinator that grows one child step per LLM turn and one per tool call.

Pure logic over the committed rows of an agent's children. Given the agent's spec and its children
(steps of the same run whose row spec names it as `parent`), `coordinate` rebuilds the conversation
from the committed outputs and says what comes next: new units to create (and wait for), a final
answer, or a failure. The scheduler does the rest (see docs/runtime.md, "Agents").

Child ids: `<agent>.t<k>` for turn k's LLM call, `<agent>.t<k>.c<call id>` for its tool calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from fleetforge.domain.models import TERMINAL_STEP, ErrorKind, StepRow, StepSpec, StepStatus, StepType
from fleetforge.domain.steptypes import AGENT_DEFAULT_MAX_TURNS
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure

__all__ = [
    "CALL_ID",
    "PARENT",
    "AgentExecutor",
    "Decision",
    "Unit",
    "call_id",
    "child_spec",
    "coordinate",
    "parent_of",
    "turn_id",
    "unit_of",
]

PARENT: Final = "parent"
"""Key of a child row's spec naming its agent step."""
UNIT: Final = "unit"
"""Key of a child row's spec: "turn" (an LLM call) or "call" (a tool call)."""
CALL_ID: Final = "call_id"
"""Key of a tool call's row spec: the call id the model gave (`tool_calls[i].id`)."""
PRECHECKED: Final = "prechecked"
"""Key of a child row's spec: its pre-hook guardrails were decided when it was created."""
_AGENT_ONLY: Final = frozenset({"instructions", "messages", "max_turns"})
_CALL_ID: Final = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Unit:
    """A child step to create. `refusal` non-empty: it is not run; the model gets this as a tool error."""

    step_id: str
    type: str
    kind: str  # turn | call
    inputs: dict[str, Any]
    refusal: str = ""
    call_id: str = ""  # the model's id of a tool call


@dataclass(slots=True)
class Decision:
    """What the agent does next: create units and wait, wait, finish with `output`, or fail."""

    create: list[Unit] = field(default_factory=list)
    wait: list[str] = field(default_factory=list)
    output: dict[str, Any] | None = None
    failure: tuple[ErrorKind, str] | None = None


def turn_id(agent: str, turn: int) -> str:
    return f"{agent}.t{turn}"


def call_id(turn: str, raw: object, index: int, taken: set[str]) -> str:
    """The child id of the `index`-th tool call of a turn: from the model's call id, made safe and unique."""
    text = _CALL_ID.sub("", raw if isinstance(raw, str) else "")[:48] or str(index)
    cid = f"{turn}.c{text}"
    if cid in taken:
        cid = f"{turn}.c{index}_{text}"
    taken.add(cid)
    return cid


def parent_of(step: StepRow) -> str | None:
    """The agent step that grew `step`, or None for a step of the run spec."""
    parent = step.spec.get(PARENT) if step.spec else None
    return parent if isinstance(parent, str) else None


def unit_of(step: StepRow) -> str:
    """"turn", "call" or "" (not an agent unit)."""
    unit = step.spec.get(UNIT, "") if step.spec else ""
    return unit if isinstance(unit, str) else ""


def child_spec(row: StepRow, agent: StepSpec) -> StepSpec:
    """The StepSpec of an agent's child: its own inputs, the agent's execution and policy settings."""
    inputs = row.spec.get("inputs", {})
    return StepSpec(id=row.step_id, type=row.type, inputs=dict(inputs) if isinstance(inputs, dict) else {},
                    execution=agent.execution, policy=agent.policy)


def child_row_spec(agent: str, unit: Unit, prechecked: bool) -> dict[str, Any]:
    spec = {PARENT: agent, UNIT: unit.kind, "inputs": unit.inputs, PRECHECKED: prechecked}
    if unit.call_id:
        spec[CALL_ID] = unit.call_id
    return spec


def _initial_messages(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if isinstance(inputs.get("instructions"), str):
        messages.append({"role": "system", "content": inputs["instructions"]})
    messages += [dict(m) for m in inputs.get("messages", []) if isinstance(m, dict)]
    return messages


def _turn_inputs(inputs: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: v for k, v in inputs.items() if k not in _AGENT_ONLY}
    out["messages"] = [dict(m) for m in messages]
    out.setdefault("tools", [])
    if not out["tools"]:
        out.pop("tools")
        out.pop("tool_choice", None)
        out.pop("parallel_tool_calls", None)
    return out


def _tool_calls(output: dict[str, Any]) -> list[dict[str, Any]]:
    calls = output.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _call_parts(call: dict[str, Any]) -> tuple[str, str]:
    fn = call.get("function")
    fn = fn if isinstance(fn, dict) else {}
    name, args = fn.get("name"), fn.get("arguments", "{}")
    return (name if isinstance(name, str) else ""), (args if isinstance(args, str) else json.dumps(args))


def _call_unit(cid: str, call: dict[str, Any], allowed: list[str]) -> Unit:
    name, raw_args = _call_parts(call)
    model_id = str(call.get("id", ""))
    if name not in allowed:
        return Unit(cid, StepType.TOOL, "call", {"tool": name, "args": {}},
                    f"tool: got {name!r:.60}, expected one of: {', '.join(allowed) or 'no tools'}", call_id=model_id)
    try:
        args = json.loads(raw_args or "{}")
    except ValueError as exc:
        return Unit(cid, StepType.TOOL, "call", {"tool": name, "args": {}},
                    f"arguments: not JSON ({exc})", call_id=model_id)
    if not isinstance(args, dict):
        return Unit(cid, StepType.TOOL, "call", {"tool": name, "args": {}},
                    f"arguments: got {type(args).__name__}, expected a JSON object", call_id=model_id)
    return Unit(cid, StepType.TOOL, "call", {"tool": name, "args": args}, call_id=model_id)


def _tool_message(call: dict[str, Any], row: StepRow) -> tuple[dict[str, Any], bool]:
    """The `role: tool` answer to `call` from its committed child; (message, ok)."""
    ok = row.status is StepStatus.SUCCEEDED
    if ok:
        content = json.dumps(row.output or {}, sort_keys=True)
    else:
        error = (row.output or {}).get("error") or f"tool call {row.status}: {row.error_kind or 'error'}"
        content = json.dumps({"error": error})
    return {"role": "tool", "tool_call_id": str(call.get("id", "")), "content": content}, ok


def coordinate(agent: StepSpec, children: dict[str, StepRow]) -> Decision:
    """The agent's next move, from the committed results of its children (a pure function of them)."""
    inputs = agent.inputs
    max_turns = int(inputs.get("max_turns", AGENT_DEFAULT_MAX_TURNS))
    allowed = [t for t in inputs.get("tools", []) if isinstance(t, str)]
    messages = _initial_messages(inputs)
    log: list[dict[str, Any]] = []
    for turn in range(1, max_turns + 1):
        tid = turn_id(agent.id, turn)
        row = children.get(tid)
        if row is None:
            return Decision(create=[Unit(tid, StepType.LLM, "turn", _turn_inputs(inputs, messages))], wait=[tid])
        if row.status not in TERMINAL_STEP:
            return Decision(wait=[tid])
        if row.status is not StepStatus.SUCCEEDED:
            return Decision(failure=(ErrorKind(row.error_kind) if row.error_kind in ErrorKind.__members__.values()
                                     else ErrorKind.CRASH, f"turn {turn} ended {row.status}"))
        out = row.output or {}
        calls = _tool_calls(out)
        text = out.get("text") if isinstance(out.get("text"), str) else ""
        assistant: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        if not calls:
            return Decision(output={"text": text, "turns": turn, "tool_calls": log, "messages": messages,
                                    "model": out.get("model", inputs.get("model", ""))})
        create: list[Unit] = []
        wait: list[str] = []
        taken: set[str] = set()
        for index, call in enumerate(calls):
            cid = call_id(tid, call.get("id"), index, taken)
            crow = children.get(cid)
            if crow is None:
                create.append(_call_unit(cid, call, allowed))
                wait.append(cid)
            elif crow.status not in TERMINAL_STEP:
                wait.append(cid)
            elif not create and not wait:
                message, ok = _tool_message(call, crow)
                messages.append(message)
                name, args = _call_parts(call)
                log.append({"turn": turn, "id": str(call.get("id", "")), "name": name, "arguments": args,
                            "ok": ok, "step": cid, "status": str(crow.status)})
        if create or wait:
            return Decision(create=create, wait=wait)
    return Decision(failure=(ErrorKind.MAX_TURNS, f"no final answer after max_turns={max_turns} turns"))


class AgentExecutor:
    """Finishes an agent step with what its coordinator decided (inputs `output` or `failure`).

    The loop itself runs in the scheduler, one child step per unit; this only settles the step through
    the ordinary completion path (post-hook guardrails on the final answer, dependents released)."""

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """The agent step reserves nothing: each of its units reserves for itself."""
        return 0, 0.0

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(model, "agent")."""
        model = step.inputs.get("model")
        return (model if isinstance(model, str) else ""), "agent"

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        failure = ctx.inputs.get("failure")
        model = str(ctx.inputs.get("model", ""))
        if isinstance(failure, dict):
            raise StepFailure(ErrorKind(failure["kind"]), str(failure["message"]), tool=model, provider="agent")
        output = ctx.inputs.get("output")
        return ExecutionResult(output=output if isinstance(output, dict) else {}, tool=model, provider="agent",
                               model=model)
