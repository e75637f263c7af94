"""Model prices (USD per 1M tokens) and the cost and token estimates derived from them. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_PRICES",
    "FALLBACK_PRICE",
    "Price",
    "PriceTable",
    "estimate_llm",
    "prompt_text",
]

PER_TOKENS: Final = 1_000_000
DEFAULT_OUTPUT_TOKENS: Final = 256  # reserved for an LLM step that sets no max_tokens


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens: fresh input, input served from the prompt cache, and output."""

    input: float
    cached_input: float
    output: float

    def __post_init__(self) -> None:
        if min(self.input, self.cached_input, self.output) < 0:
            raise ValueError(f"prices must be >= 0, got {self}")


# Public list prices at the time of writing; override per deployment with PriceTable(...).
DEFAULT_PRICES: Final[Mapping[str, Price]] = {
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "o3-mini": Price(1.10, 0.55, 4.40),
    "o4-mini": Price(1.10, 0.275, 4.40),
    "claude-sonnet": Price(3.00, 0.30, 15.00),
    "claude-3-5-sonnet": Price(3.00, 0.30, 15.00),
    "claude-3-7-sonnet": Price(3.00, 0.30, 15.00),
    "claude-haiku": Price(0.80, 0.08, 4.00),
    "sim-small": Price(0.20, 0.05, 0.80),
    "sim-large": Price(3.00, 0.75, 12.00),
}

# Unknown models are priced like a mid-size hosted model, so budgets never treat them as free.
FALLBACK_PRICE: Final = Price(2.50, 1.25, 10.00)


class PriceTable:
    """Prices keyed by model name; the longest matching prefix wins, else the default.

    Matching is case-insensitive; a vendor prefix such as ``openai/gpt-4o`` is also tried
    without its ``vendor/`` part.
    """

    def __init__(
        self, entries: Mapping[str, Price] | None = None, *, default: Price = FALLBACK_PRICE
    ) -> None:
        source = DEFAULT_PRICES if entries is None else entries
        self._entries: dict[str, Price] = {k.lower(): v for k, v in source.items()}
        # longest first, so "gpt-4o-mini" beats "gpt-4o"
        self._prefixes = sorted(self._entries, key=len, reverse=True)
        self.default = default

    def with_entries(self, entries: Mapping[str, Price]) -> PriceTable:
        """A copy with `entries` added or replaced."""
        merged = dict(self._entries)
        merged.update({k.lower(): v for k, v in entries.items()})
        return PriceTable(merged, default=self.default)

    def lookup(self, model: str) -> Price | None:
        """The price whose key is the longest prefix of `model`, or None."""
        name = model.strip().lower()
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        for candidate in candidates:
            for prefix in self._prefixes:
                if candidate.startswith(prefix):
                    return self._entries[prefix]
        return None

    def price(self, model: str) -> Price:
        """The price of `model`, falling back to the default."""
        return self.lookup(model) or self.default

    def cost(self, model: str, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """USD for one call, rounded to 6 decimals.

        `cached_tokens` are part of `input_tokens`: they are billed at the cached rate and the
        remaining ``input_tokens - cached_tokens`` at the input rate.
        """
        p = self.price(model)
        inputs = max(0, input_tokens)
        cached = min(max(0, cached_tokens), inputs)
        usd = (
            (inputs - cached) * p.input + cached * p.cached_input + max(0, output_tokens) * p.output
        ) / PER_TOKENS
        return round(usd, 6)


def prompt_text(inputs: Mapping[str, Any]) -> str:
    """The text an LLM step sends: `prompt`, or the string contents of `messages` joined."""
    prompt = inputs.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = inputs.get("messages")
    parts: list[str] = []
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                parts.extend(
                    c["text"] for c in content if isinstance(c, Mapping) and isinstance(c.get("text"), str)
                )
    return "\n".join(parts)


def estimate_llm(
    prices: PriceTable,
    inputs: Mapping[str, Any],
    *,
    default_model: str,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> tuple[int, float]:
    """Tokens and USD to reserve for an LLM step: prompt chars / 4 plus `max_tokens` (or the default).

    No cache hits are assumed, so the estimate errs high.
    """
    model = inputs.get("model")
    name = model if isinstance(model, str) and model else default_model
    prompt_tokens = math.ceil(len(prompt_text(inputs)) / 4)
    max_tokens = inputs.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        output_tokens = max_tokens
    else:
        output_tokens = max(0, default_output_tokens)
    return prompt_tokens + output_tokens, prices.cost(name, prompt_tokens, 0, output_tokens)
