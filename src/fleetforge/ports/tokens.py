"""What API authentication needs from a store: the `api_tokens` table (hashes only, never a token)."""

from __future__ import annotations

from typing import Protocol

from fleetforge.domain.tokens import TokenRow

__all__ = ["TokenStore"]


class TokenStore(Protocol):
    """The store methods for API tokens (both stores implement them beside `Store`)."""

    def insert_token(self, row: TokenRow) -> None:
        """Store a new token's row (its id and hash are unique)."""
        ...
    def list_tokens(self) -> list[TokenRow]:
        """Every token row, revoked ones too, oldest first."""
        ...
    def token_by_digest(self, digest: str) -> TokenRow | None:
        """The row whose SHA-256 is `digest`, revoked or not; None when there is none."""
        ...
    def revoke_token(self, token_id: str, now_us: int) -> bool:
        """Mark token `token_id` revoked at `now_us`; False when it was already revoked or does not exist."""
        ...
