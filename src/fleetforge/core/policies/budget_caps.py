"""Budget caps guardrail: per-run token and cost ceilings checked before each attempt."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from fleetforge.domain.money import MAX_USD, to_micros
from fleetforge.ports.policy import Effect, Hook, PolicyContext, Verdict

__all__ = ["BudgetCapsPack"]

_OPTIONS: Final = ("max_tokens", "max_cost", "warn_ratio")


@dataclass(frozen=True, slots=True)
class _Settings:
    max_tokens: int | None = None
    max_cost: float | None = None
    warn_ratio: float = 0.8


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse(options: dict[str, Any]) -> tuple[_Settings, list[str]]:
    problems = [
        f"{key}: got {value!r}, expected no such option (known: {', '.join(_OPTIONS)})"
        for key, value in options.items()
        if key not in _OPTIONS
    ]
    max_tokens = options.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
    ):
        problems.append(f"max_tokens: got {max_tokens!r}, expected a positive integer")
    max_cost = options.get("max_cost")
    if max_cost is not None and (not _is_number(max_cost) or not 0 < max_cost <= MAX_USD):
        problems.append(f"max_cost: got {max_cost!r}, expected a positive number of USD <= {MAX_USD:.0f}")
    warn_ratio = options.get("warn_ratio", 0.8)
    if not _is_number(warn_ratio) or not 0 <= warn_ratio <= 1:
        problems.append(f"warn_ratio: got {warn_ratio!r}, expected a number from 0 to 1")
    if problems:
        return _Settings(), problems
    cost = None if max_cost is None else float(max_cost)
    return _Settings(max_tokens, cost, float(warn_ratio)), []


class BudgetCapsPack:
    """Denies an attempt whose run usage plus reservation exceeds `max_tokens` or `max_cost`.

    At or above `warn_ratio` of a cap it allows with a reason starting 'warn:'. Costs compare in
    integer micro-USD, so float sums do not trip a cap they only reach.
    """

    name: str = "budget_caps"
    hooks: frozenset[Hook] = frozenset({Hook.PRE})

    def validate_options(self, options: dict[str, Any]) -> list[str]:
        """Problems with `max_tokens` (>0 int), `max_cost` (>0 USD), `warn_ratio` (0..1), unknown keys."""
        return _parse(options)[1]

    def evaluate(self, ctx: PolicyContext) -> Verdict:
        """DENY over a cap, ALLOW with a 'warn:' reason near one, plain ALLOW otherwise."""
        settings, problems = _parse(ctx.options)
        if problems:
            return Verdict(Effect.DENY, "invalid options: " + "; ".join(problems))
        # (option, projected usage, cap, usage shown, cap shown); usage and cap in tokens or micro-USD
        checks: list[tuple[str, int, int, str, str]] = []
        if settings.max_tokens is not None:
            tokens = ctx.tokens_used_before + ctx.tokens_reserved
            checks.append(("max_tokens", tokens, settings.max_tokens, str(tokens), str(settings.max_tokens)))
        if settings.max_cost is not None:
            micros = to_micros(ctx.cost_used_before) + to_micros(ctx.cost_reserved)
            cap = max(1, to_micros(settings.max_cost))
            checks.append(("max_cost", micros, cap, f"${micros / 1e6:.6g}", f"${settings.max_cost:.6g}"))
        if not checks:
            return Verdict(Effect.ALLOW, "no caps configured")
        ratio = round(max(used / cap for _, used, cap, _, _ in checks), 6)
        raw: dict[str, Any] = {"ratio": ratio}
        over = [
            f"{option} {shown} > {cap_shown}" for option, used, cap, shown, cap_shown in checks if used > cap
        ]
        if over:
            return Verdict(Effect.DENY, "over budget cap: " + "; ".join(over), raw)
        near = [
            f"{option} at {used / cap:.0%} ({shown} of {cap_shown})"
            for option, used, cap, shown, cap_shown in checks
            if used >= settings.warn_ratio * cap
        ]
        if near:
            return Verdict(Effect.ALLOW, "warn: " + "; ".join(near), raw)
        return Verdict(Effect.ALLOW, "within budget caps", raw)
