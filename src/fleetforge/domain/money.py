"""Cost arithmetic in integer micro-USD so that sums are exact in every store, and the largest limits
the stores hold (64-bit integers): settings and specs are checked against them before anything is stored.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_TOKENS", "MAX_USD", "MICROS", "to_micros", "to_usd"]

MICROS = 1_000_000
MAX_TOKENS: Final = 2**63 - 1  # a token limit or cap
MAX_USD: Final = 1e12  # a cost limit or cap: its micro-USD (and a sum of a few) fit in 64 bits


def to_micros(usd: float) -> int:
    """USD to integer micro-USD, rounded half away from zero."""
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    """Integer micro-USD to USD with 6 decimals."""
    return round(micros / MICROS, 6)
