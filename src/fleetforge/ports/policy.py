"""Guardrail packs: evaluated before a step (on its inputs) and after it (on its output)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from fleetforge.domain.models import StepSpec

__all__ = ["Effect", "Hook", "PolicyContext", "PolicyPack", "Verdict"]


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    MODIFY = "modify"


class Hook(StrEnum):
    PRE = "pre"
    POST = "post"


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a pack sees. `payload` is the step inputs (pre) or output (post)."""

    run_id: str
    step: StepSpec
    hook: Hook
    payload: dict[str, Any]
    options: dict[str, Any]
    tokens_reserved: int = 0  # this attempt's reservation (pre)
    cost_reserved: float = 0.0
    tokens_used_before: int = 0  # run usage so far
    cost_used_before: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A pack's decision. `payload` is the rewritten payload when effect is MODIFY."""

    effect: Effect
    reason: str
    raw: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] | None = None


class PolicyPack(Protocol):
    """A named guardrail. `hooks` says where it runs; `evaluate` must be pure and fast."""

    name: str
    hooks: frozenset[Hook]

    def validate_options(self, options: dict[str, Any]) -> list[str]:
        """Problems with the options, as 'option: got X, expected Y'; empty when valid."""
        ...

    def evaluate(self, ctx: PolicyContext) -> Verdict: ...
