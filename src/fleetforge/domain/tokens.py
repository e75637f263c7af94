"""API bearer tokens: their format, scopes and the hash that is all a store keeps of them.

A token is ``fft_`` followed by 43 URL-safe characters (32 random bytes). The store keeps its SHA-256
(hex), an id, a name and a scope; the token itself is shown once, when it is created, and can never be
read back. Scopes are ordered: ``read`` < ``submit`` < ``control``; a token allows its own scope and
those below it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from fleetforge.domain.errors import ConfigError, FleetForgeError

__all__ = [
    "MAX_NAME_CHARS",
    "TOKEN_PATTERN",
    "TOKEN_PREFIX",
    "Forbidden",
    "Scope",
    "TokenRow",
    "Unauthorized",
    "check_name",
    "hash_token",
    "is_well_formed",
    "new_token",
    "parse_scope",
]

TOKEN_PREFIX: Final = "fft_"
TOKEN_PATTERN: Final = re.compile(r"fft_[A-Za-z0-9_-]{20,}")
"""A token (or a long enough piece of one) anywhere in text: what `domain.secrets` masks."""
_TOKEN_FULL: Final = re.compile(r"fft_[A-Za-z0-9_-]{43}")
_ID_CHARS: Final = 12
MAX_NAME_CHARS: Final = 64
_NAME: Final = re.compile(r"[\w .:@/-]{1,64}")


class Scope(StrEnum):
    """What a token may do; each scope includes the ones before it."""

    READ = "read"
    SUBMIT = "submit"
    CONTROL = "control"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Scope) -> bool:
        """True when a token of this scope may call an endpoint that needs `needed`."""
        return self.rank >= needed.rank


_RANKS: Final = {scope: i for i, scope in enumerate(Scope)}


def parse_scope(text: str, source: str = "scope") -> Scope:
    """The scope named `text`; ConfigError naming `source` and the choices otherwise."""
    try:
        return Scope(text)
    except ValueError:
        raise ConfigError(f"{source}: got {text!r:.40}, expected one of {', '.join(Scope)}") from None


def check_name(name: str) -> str:
    """A token's name (letters, digits, space and `_ . : @ / -`, 1 to 64 characters); ConfigError otherwise."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--name: got {name!r:.80}, expected 1 to {MAX_NAME_CHARS} letters, digits, spaces "
                          "or _ . : @ / -")
    return name


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A stored token: never the token itself, only its SHA-256."""

    id: str
    name: str
    scope: Scope
    digest: str
    created_us: int
    revoked_us: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_us is None


def hash_token(token: str) -> str:
    """The SHA-256 (64 hex digits) under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def is_well_formed(token: str) -> bool:
    """True when `token` has the shape of a FleetForge token (prefix, 43 URL-safe characters)."""
    return _TOKEN_FULL.fullmatch(token) is not None


def new_token(name: str, scope: Scope, now_us: int) -> tuple[str, TokenRow]:
    """A fresh token and the row to store for it (its hash, a 12-hex-digit id)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, TokenRow(id=secrets.token_hex(_ID_CHARS // 2), name=check_name(name), scope=scope,
                           digest=hash_token(token), created_us=now_us)


class Unauthorized(FleetForgeError):
    """No token, a malformed, unknown or revoked one: HTTP 401."""


class Forbidden(FleetForgeError):
    """A valid token whose scope is below what the endpoint needs: HTTP 403."""

    def __init__(self, have: Scope, need: Scope) -> None:
        self.have, self.need = have, need
        super().__init__(f"this endpoint needs a token of scope {need.value} or above; yours is {have.value} "
                         f"(create one with `fleetforge tokens create --scope {need.value}`)")
