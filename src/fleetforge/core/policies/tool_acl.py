"""Tool ACL guardrail: allow and deny lists (names or fnmatch globs) for tool names and HTTP hosts."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final
from urllib.parse import urlsplit

from fleetforge.domain.models import StepType
from fleetforge.ports.policy import Effect, Hook, PolicyContext, Verdict

__all__ = ["ToolAclPack", "tool_target"]

_OPTIONS: Final = ("allow", "deny")


def tool_target(step_type: str, inputs: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) the ACL applies to: ('tool', inputs['tool']) or ('host', host of inputs['url']).

    The name is "" when missing or unparsable; None for step types the ACL does not cover.
    """
    if step_type is StepType.TOOL:
        tool = inputs.get("tool")
        return ("tool", tool if isinstance(tool, str) else "")
    if step_type is StepType.HTTP:
        url = inputs.get("url")
        try:
            host = urlsplit(url).hostname if isinstance(url, str) else None
        except ValueError:
            host = None
        return ("host", (host or "").rstrip("."))
    return None


@dataclass(frozen=True, slots=True)
class _Settings:
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


def _parse(options: dict[str, Any]) -> tuple[_Settings, list[str]]:
    problems = [
        f"{key}: got {value!r}, expected no such option (known: {', '.join(_OPTIONS)})"
        for key, value in options.items()
        if key not in _OPTIONS
    ]
    lists: dict[str, tuple[str, ...]] = {}
    for key in _OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{key}: got {value!r}, expected a list of tool names, hosts or globs")
        else:
            lists[key] = tuple(value)
    if problems:
        return _Settings(), problems
    return _Settings(lists.get("allow"), lists.get("deny", ())), []


def _first_match(name: str, patterns: tuple[str, ...], fold: bool) -> str | None:
    subject = name.lower() if fold else name
    for pattern in patterns:
        if fnmatchcase(subject, pattern.lower() if fold else pattern):
            return pattern
    return None


class ToolAclPack:
    """Denies tool and http steps whose tool name or URL host is denied or, given `allow`, not allowed.

    `deny` wins over `allow`. Tool names match case-sensitively, hosts case-insensitively; a glob
    like '*.example.com' does not match 'example.com' itself. A missing tool name or host is denied
    whenever a list is configured.
    """

    name: str = "tool_acl"
    hooks: frozenset[Hook] = frozenset({Hook.PRE})

    def validate_options(self, options: dict[str, Any]) -> list[str]:
        """Problems with `allow`, `deny` (lists of non-empty strings) and unknown keys."""
        return _parse(options)[1]

    def evaluate(self, ctx: PolicyContext) -> Verdict:
        """DENY on a deny match or a miss of a given allow list; ALLOW otherwise."""
        settings, problems = _parse(ctx.options)
        if problems:
            return Verdict(Effect.DENY, "invalid options: " + "; ".join(problems))
        target = tool_target(ctx.step.type, ctx.payload)
        if target is None:
            return Verdict(Effect.ALLOW, "not a tool step")
        kind, name = target
        raw: dict[str, Any] = {kind: name}
        if not name:
            if settings.allow is None and not settings.deny:
                return Verdict(Effect.ALLOW, "no acl configured", raw)
            return Verdict(Effect.DENY, f"{ctx.step.type} step has no {kind} to check", raw)
        fold = kind == "host"
        denied = _first_match(name, settings.deny, fold)
        if denied is not None:
            return Verdict(Effect.DENY, f"{kind} {name!r} matches deny {denied!r}", {**raw, "rule": denied})
        if settings.allow is None:
            return Verdict(Effect.ALLOW, f"{kind} {name!r} not denied", raw)
        allowed = _first_match(name, settings.allow, fold)
        if allowed is None:
            return Verdict(Effect.DENY, f"{kind} {name!r} not in allow list", raw)
        return Verdict(Effect.ALLOW, f"{kind} {name!r} matches allow {allowed!r}", {**raw, "rule": allowed})
