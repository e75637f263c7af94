"""Conversions between API token rows and the column tuples both SQL stores use."""

from __future__ import annotations

from typing import Any

from fleetforge.domain.tokens import Scope, TokenRow

__all__ = ["token_from_row", "token_params"]


def token_params(t: TokenRow) -> tuple[Any, ...]:
    return (t.id, t.name, t.scope.value, t.digest, t.created_us, t.revoked_us)


def token_from_row(r: Any) -> TokenRow:
    return TokenRow(id=str(r[0]), name=str(r[1]), scope=Scope(r[2]), digest=str(r[3]), created_us=int(r[4]),
                    revoked_us=None if r[5] is None else int(r[5]))
