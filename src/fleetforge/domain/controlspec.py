"""The operator parts of a run spec: `approval` on a step, `execution.compensation`, `breakpoints`.

Checked with the rest of the spec (domain/spec.py calls these with its checker); each problem reads
'field.path: got VALUE, expected WHAT'. docs/runtime.md ("Operators in control") describes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from fleetforge.domain.models import ApprovalSpec, StepSpec, StepType

__all__ = [
    "APPROVAL_KEYS",
    "MAX_APPROVAL_TIMEOUT_MS",
    "Checker",
    "approval",
    "approval_dict",
    "breakpoints",
    "check_compensations",
    "compensation",
]

MAX_APPROVAL_TIMEOUT_MS: Final = 30 * 86_400_000
"""The longest approval wait a spec may set (30 days)."""
APPROVAL_KEYS: Final = ("timeout_ms", "tools")


class Checker(Protocol):
    """What these checks need of the spec checker (domain/spec.py `_Checker`)."""

    problems: list[str]

    def bad(self, path: str, value: object, expected: str) -> None: ...
    def mapping(self, value: object, path: str, expected: str,
                allowed: tuple[str, ...] | None = None) -> dict[str, Any] | None: ...
    def field(self, m: dict[str, Any], key: str, path: str, default: Any, lo: float, hi: float | None) -> Any: ...


def approval(check: Checker, value: object, path: str, step_type: str | None,
             inputs: Mapping[str, Any]) -> ApprovalSpec | None:
    """A step's `approval`: `{}` or `{timeout_ms: N}`; on an agent step also `tools: [names]` (each one of
    the agent's `tools`), which asks before each call of those tools instead of before the step."""
    m = check.mapping(value, path, "a mapping with timeout_ms and/or tools (agent steps), e.g. {} or "
                                   "{timeout_ms: 600000}", APPROVAL_KEYS)
    if m is None:
        return None
    timeout = None
    if "timeout_ms" in m:
        timeout = check.field(m, "timeout_ms", path, 0, 1, MAX_APPROVAL_TIMEOUT_MS) or None
    tools: list[str] = []
    if "tools" in m:
        raw = m["tools"]
        known = [t for t in inputs.get("tools", []) if isinstance(t, str)] if step_type == StepType.AGENT else []
        if step_type != StepType.AGENT:
            check.bad(f"{path}.tools", raw, "no tools on a step that is not an agent (drop it: the approval "
                                            "then applies to the step itself)")
        elif not isinstance(raw, (list, tuple)) or not raw:
            check.bad(f"{path}.tools", raw, "a non-empty list of the agent's tool names")
        else:
            for index, name in enumerate(raw):
                if not isinstance(name, str) or name not in known:
                    check.bad(f"{path}.tools[{index}]", name,
                              f"one of the agent's tools (inputs.tools: {', '.join(known) or 'none'})")
                elif name not in tools:
                    tools.append(name)
    return ApprovalSpec(timeout_ms=timeout, tools=tuple(tools))


def approval_dict(spec: ApprovalSpec) -> dict[str, Any]:
    """The canonical form of an `approval` (what `approval` reads back)."""
    out: dict[str, Any] = {}
    if spec.timeout_ms is not None:
        out["timeout_ms"] = spec.timeout_ms
    if spec.tools:
        out["tools"] = list(spec.tools)
    return out


def compensation(check: Checker, value: object, path: str) -> str | None:
    """`execution.compensation`: `{step: ID}` (the id is checked against the graph later)."""
    m = check.mapping(value, path, "a mapping {step: ID} naming the step to queue when this one fails for good",
                      ("step",))
    if m is None:
        return None
    sid = m.get("step")
    if not isinstance(sid, str) or not sid:
        check.bad(f"{path}.step", sid, "the id of another step of the run")
        return None
    return sid


def breakpoints(check: Checker, value: object, ids: frozenset[str]) -> tuple[str, ...]:
    """`breakpoints`: step ids of the run, each once."""
    if not isinstance(value, (list, tuple)):
        check.bad("breakpoints", value, "a list of step ids the run pauses before")
        return ()
    out: list[str] = []
    for index, sid in enumerate(value):
        if not isinstance(sid, str) or sid not in ids:
            check.bad(f"breakpoints[{index}]", sid, f"a step id of the run (known: {', '.join(sorted(ids)[:20])})")
        elif sid in out:
            check.bad(f"breakpoints[{index}]", sid, "each step id once")
        else:
            out.append(sid)
    return tuple(out)


def check_compensations(check: Checker, steps: tuple[StepSpec, ...],
                        above: Mapping[str, frozenset[str]]) -> None:
    """Each compensation step exists, is not the failing step nor one of its ancestors, depends only on the
    failing step or its ancestors (all ended when it is queued), and no step depends on it (it runs only
    when queued by a failure)."""
    index = {s.id: i for i, s in enumerate(steps)}
    targets: set[str] = set()
    for i, s in enumerate(steps):
        comp = s.execution.compensation
        if comp is None:
            continue
        path = f"steps[{i}].execution.compensation.step"
        if comp == s.id:
            check.bad(path, comp, "another step (a step cannot compensate itself)")
        elif comp not in index:
            check.bad(path, comp, f"the id of a step of the run (known: {', '.join(sorted(index)[:20])})")
        elif comp in above.get(s.id, frozenset()):
            check.bad(path, comp, f"a step that is not an ancestor of {s.id!r} (an ancestor has already run when "
                                  f"{s.id!r} fails)")
        else:
            allowed = above.get(s.id, frozenset()) | {s.id}
            extra = [d for d in steps[index[comp]].depends_on if d not in allowed]
            if extra:
                check.bad(path, comp, f"a step whose depends_on are only {s.id!r} or its ancestors (the "
                                      f"compensation step {comp!r} depends on {', '.join(extra)})")
            else:
                targets.add(comp)
    for i, s in enumerate(steps):
        waits = [d for d in s.depends_on if d in targets]
        if waits:
            check.bad(f"steps[{i}].depends_on", waits[0], f"a step that is not a compensation step ({waits[0]!r} "
                                                          "runs only when the step it compensates fails)")
