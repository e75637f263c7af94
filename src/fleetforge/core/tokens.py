"""Create, list, revoke and check API bearer tokens against a `TokenStore` (hashes only)."""

from __future__ import annotations

from fleetforge.domain.errors import ConfigError, NotFoundError
from fleetforge.domain.tokens import (
    TOKEN_PREFIX,
    Forbidden,
    Scope,
    TokenRow,
    Unauthorized,
    hash_token,
    is_well_formed,
    new_token,
)
from fleetforge.ports.clock import Clock
from fleetforge.ports.tokens import TokenStore

__all__ = ["authenticate", "create_token", "revoke_token"]

_HOW = "send the header `Authorization: Bearer fft_...` with a token from `fleetforge tokens create`"


def create_token(store: TokenStore, scope: Scope, name: str, clock: Clock) -> tuple[str, TokenRow]:
    """A new token of `scope`, stored as its hash; the token is returned once and kept nowhere."""
    token, row = new_token(name, scope, clock.now_us())
    store.insert_token(row)
    return token, row


def revoke_token(store: TokenStore, token_id: str, clock: Clock) -> bool:
    """Revoke token `token_id` (its id, as `tokens list` shows it); False when it was already revoked.

    NotFoundError when there is no such token; ConfigError when given a token instead of its id.
    """
    if token_id.startswith(TOKEN_PREFIX):
        raise ConfigError("tokens revoke: got a token, expected its id (the first column of "
                          "`fleetforge tokens list`); the token was not printed")
    if store.revoke_token(token_id, clock.now_us()):
        return True
    if not any(row.id == token_id for row in store.list_tokens()):
        raise NotFoundError(f"no token with id {token_id!r:.40}; list them with `fleetforge tokens list`")
    return False


def authenticate(store: TokenStore, authorization: str | None, needed: Scope) -> TokenRow:
    """The token row an `Authorization` header value carries, if it allows `needed`.

    Raises Unauthorized (no header, not a bearer token, unknown or revoked token) or Forbidden (a valid
    token of a lower scope). Messages never repeat the token.
    """
    if not authorization:
        raise Unauthorized(f"no bearer token; {_HOW}")
    kind, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token:
        raise Unauthorized(f"the Authorization header is not a bearer token; {_HOW}")
    if not is_well_formed(token):
        raise Unauthorized(f"the bearer token is not a FleetForge token; {_HOW}")
    row = store.token_by_digest(hash_token(token))
    if row is None:
        raise Unauthorized(f"unknown bearer token; {_HOW}")
    if not row.active:
        raise Unauthorized(f"the bearer token {row.id} was revoked; {_HOW}")
    if not row.scope.allows(needed):
        raise Forbidden(row.scope, needed)
    return row
