"""Cost arithmetic in integer micro-USD so that sums are exact in every store."""

from __future__ import annotations

__all__ = ["MICROS", "to_micros", "to_usd"]

MICROS = 1_000_000


def to_micros(usd: float) -> int:
    """USD to integer micro-USD, rounded half away from zero."""
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    """Integer micro-USD to USD with 6 decimals."""
    return round(micros / MICROS, 6)
