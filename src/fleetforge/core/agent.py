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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fleetforge.domain.models import TERMINAL_STEP, ErrorKind, StepRow, StepSpec, StepStatus, StepType
from fleetforge.domain.steptypes import AGENT_DEFAULT_MAX_TURNS, GRAPH_ENTRYPOINT
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor, StepFailure

__all__ = [
    "CALL_ID",
    "PARENT",
    "AgentExecutor",
    "Decision",
    "Unit",
    "call_id",
    "call_parts",
    "child_spec",
    "coordinate",
    "held",
    "holds_worker",
    "initial_messages",
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
HELD: Final = "held"
"""Key of a child row's spec: the unit runs inside its agent's attempt (a graph step holding its worker);
the scheduler never queues or retries it, and its failure is its agent's to handle."""
KEY: Final = "key"
"""Key of a held turn's row spec: a digest of its request, to recognise it when a node runs again."""
ENTRYPOINT: Final = GRAPH_ENTRYPOINT
"""The input that makes an agent step a graph step (`module:callable`), run by `AgentExecutor.graph`."""
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
    """What the agent does next: create units and wait, wait, finish with `output`, or fail.

    `messages` and `tool_calls` are the conversation so far and its answered calls (as in the output)."""

    create: list[Unit] = field(default_factory=list)
    wait: list[str] = field(default_factory=list)
    output: dict[str, Any] | None = None
    failure: tuple[ErrorKind, str] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


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


def held(step: StepRow) -> bool:
    """True for a unit run inside its agent's attempt (see HELD)."""
    return bool(step.spec.get(HELD)) if step.spec else False


def holds_worker(step: StepSpec) -> bool:
    """True for a graph agent step: it runs in the worker that claimed it, its units inside its attempt."""
    return ENTRYPOINT in step.inputs


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


def initial_messages(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The system message (`instructions`) and the `messages` the agent's first turn gets."""
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


def call_parts(call: dict[str, Any]) -> tuple[str, str]:
    """(tool name, arguments as the model wrote them) of a tool call of an assistant message."""
    fn = call.get("function")
    fn = fn if isinstance(fn, dict) else {}
    name, args = fn.get("name"), fn.get("arguments", "{}")
    return (name if isinstance(name, str) else ""), (args if isinstance(args, str) else json.dumps(args))


def _call_unit(cid: str, call: dict[str, Any], allowed: list[str]) -> Unit:
    name, raw_args = call_parts(call)
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


def coordinate(agent: StepSpec, children: Mapping[str, StepRow]) -> Decision:
    """The agent's next move, from the committed results of its children (a pure function of them)."""
    messages = initial_messages(agent.inputs)
    log: list[dict[str, Any]] = []
    decision = _decide(agent, children, messages, log)
    decision.messages, decision.tool_calls = messages, log
    return decision


def _decide(agent: StepSpec, children: Mapping[str, StepRow], messages: list[dict[str, Any]],
            log: list[dict[str, Any]]) -> Decision:
    """`coordinate`, appending to `messages` and `log` the conversation as far as it is committed."""
    inputs = agent.inputs
    max_turns = int(inputs.get("max_turns", AGENT_DEFAULT_MAX_TURNS))
    allowed = [t for t in inputs.get("tools", []) if isinstance(t, str)]
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
                name, args = call_parts(call)
                log.append({"turn": turn, "id": str(call.get("id", "")), "name": name, "arguments": args,
                            "ok": ok, "step": cid, "status": str(crow.status)})
        if create or wait:
            return Decision(create=create, wait=wait)
    return Decision(failure=(ErrorKind.MAX_TURNS, f"no final answer after max_turns={max_turns} turns"))


class AgentExecutor:
    """Finishes an agent step with what its coordinator decided (inputs `output` or `failure`).

    The loop itself runs in the scheduler, one child step per unit; this only settles the step through
    the ordinary completion path (post-hook guardrails on the final answer, dependents released).
    A graph step (inputs name an `entrypoint`) goes to `graph`, which runs it in this worker."""

    def __init__(self, graph: Executor | None = None) -> None:
        self.graph = graph

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """The agent step reserves nothing: each of its units reserves for itself."""
        return 0, 0.0

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(model, "agent"); a graph step's: (entrypoint, "langgraph")."""
        if holds_worker(step):
            return str(step.inputs.get(ENTRYPOINT, "")), "langgraph"
        model = step.inputs.get("model")
        return (model if isinstance(model, str) else ""), "agent"

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        if holds_worker(ctx.step):
            if self.graph is None:
                raise StepFailure(ErrorKind.VALIDATION, "this worker cannot run graph steps: install the "
                                  "langgraph extra (pip install 'fleetforge[langgraph]')", provider="langgraph")
            return await self.graph.execute(ctx)
        failure = ctx.inputs.get("failure")
        model = str(ctx.inputs.get("model", ""))
        if isinstance(failure, dict):
            raise StepFailure(ErrorKind(failure["kind"]), str(failure["message"]), tool=model, provider="agent")
        output = ctx.inputs.get("output")
        return ExecutionResult(output=output if isinstance(output, dict) else {}, tool=model, provider="agent",
                               model=model)
