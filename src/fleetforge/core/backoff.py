"""Exponential backoff with full jitter: the one backoff of every retry loop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter, capped; `reset()` after a success."""

    initial_s: float = 0.1
    max_s: float = 10.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next try (grows with each call until `reset`)."""
        ceiling = min(self.max_s, self.initial_s * self.factor ** self.attempts)
        self.attempts += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempts = 0
