"""An agent step's transcript, rebuilt from its children's committed rows by the agent's own coordinator.

`core/agent.py` `coordinate` replays the conversation the model saw (system/user messages, each turn's
assistant message, each `role: tool` answer); this lays it out per turn for people to read, with each
tool call's child step, and the calls still running or not yet answered. Nothing is recomputed here:
every message is the one the agent sent or received, as stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetforge.core.agent import call_id, call_parts, coordinate, initial_messages, parent_of, turn_id
from fleetforge.domain.models import StepRow, StepSpec

__all__ = ["CallView", "Transcript", "TurnView", "children_of", "transcript"]


@dataclass(frozen=True, slots=True)
class CallView:
    """A tool call the model asked for: its child step and, once the model got it, the answer."""

    step_id: str
    call_id: str  # the model's id for the call
    name: str
    arguments: str  # as the model wrote them
    row: StepRow | None  # None while the child is not stored
    answer: str | None  # the `role: tool` content the model received; None until it is answered


@dataclass(frozen=True, slots=True)
class TurnView:
    """One LLM turn: its child step, the assistant message (None until the turn succeeded), its calls."""

    turn: int
    step_id: str
    row: StepRow
    message: dict[str, Any] | None
    calls: tuple[CallView, ...]


@dataclass(frozen=True, slots=True)
class Transcript:
    """The prompt (system/user messages), the turns, and the final answer or why there is none."""

    prompt: tuple[dict[str, Any], ...]
    turns: tuple[TurnView, ...]
    final: str | None
    failure: str | None


def children_of(agent: str, rows: Iterable[StepRow]) -> dict[str, StepRow]:
    """The rows of the units `agent` grew, by step id."""
    return {r.step_id: r for r in rows if parent_of(r) == agent}


def transcript(agent: StepSpec, children: Mapping[str, StepRow]) -> Transcript:
    """The transcript of `agent` as far as its `children` (its units' rows) are committed."""
    decision = coordinate(agent, children)
    prompt = len(initial_messages(agent.inputs))
    assistants: list[dict[str, Any]] = []
    tool_answers: list[str] = []
    for m in decision.messages[prompt:]:
        if m.get("role") == "assistant":
            assistants.append(m)
        elif m.get("role") == "tool":
            tool_answers.append(str(m.get("content", "")))
    # the coordinator appends each answered call's log entry and `role: tool` message together
    answers = {entry["step"]: text for entry, text in zip(decision.tool_calls, tool_answers, strict=True)}
    turns: list[TurnView] = []
    k = 1
    while (tid := turn_id(agent.id, k)) in children:
        message = assistants[k - 1] if k <= len(assistants) else None
        calls: list[CallView] = []
        taken: set[str] = set()
        raw = message.get("tool_calls") if message else None
        for index, call in enumerate(raw if isinstance(raw, list) else []):
            cid = call_id(tid, call.get("id"), index, taken)
            name, arguments = call_parts(call)
            calls.append(CallView(cid, str(call.get("id", "")), name, arguments, children.get(cid), answers.get(cid)))
        turns.append(TurnView(k, tid, children[tid], message, tuple(calls)))
        k += 1
    output = decision.output
    return Transcript(prompt=tuple(decision.messages[:prompt]), turns=tuple(turns),
                      final=str(output.get("text", "")) if output is not None else None,
                      failure=decision.failure[1] if decision.failure is not None else None)
