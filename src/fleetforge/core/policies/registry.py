"""The built-in guardrail packs by name, and their option validators."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fleetforge.core.policies.budget_caps import BudgetCapsPack
from fleetforge.core.policies.pii import PiiRedactionPack
from fleetforge.core.policies.prompt_injection import PromptInjectionPack
from fleetforge.core.policies.tool_acl import ToolAclPack
from fleetforge.ports.policy import PolicyPack

__all__ = ["default_packs", "option_validators"]


def default_packs() -> dict[str, PolicyPack]:
    """Fresh instances of the four built-in packs, keyed by pack name."""
    packs: list[PolicyPack] = [PromptInjectionPack(), PiiRedactionPack(), ToolAclPack(), BudgetCapsPack()]
    return {pack.name: pack for pack in packs}


def option_validators(packs: Mapping[str, PolicyPack]) -> dict[str, Callable[[dict[str, Any]], list[str]]]:
    """Each pack name mapped to that pack's `validate_options`."""
    return {name: pack.validate_options for name, pack in packs.items()}
