"""The API token table against every backend (SQLite file, PostgreSQL schema): hashes in, rows out,
revocation once, unique digests."""

from __future__ import annotations

from typing import cast

import pytest

from fleetforge.core.tokens import authenticate, create_token, revoke_token
from fleetforge.domain.errors import ConfigError, NotFoundError, StoreError
from fleetforge.domain.tokens import Forbidden, Scope, TokenRow, Unauthorized, hash_token
from fleetforge.ports.store import Store
from fleetforge.ports.tokens import TokenStore
from tests.conftest import FakeClock


def ts(store: Store) -> TokenStore:
    return cast(TokenStore, store)


def test_tokens_are_stored_as_hashes_listed_and_revoked_once(store: Store, clock: FakeClock) -> None:
    assert ts(store).list_tokens() == []
    token, row = create_token(ts(store), Scope.SUBMIT, "ci bot", clock)
    clock.advance(5)
    other, row2 = create_token(ts(store), Scope.READ, "grafana", clock)
    assert ts(store).list_tokens() == [row, row2]
    assert row.digest == hash_token(token) and token not in repr(ts(store).list_tokens())
    assert ts(store).token_by_digest(hash_token(other)) == row2
    assert ts(store).token_by_digest(hash_token(other + "x")) is None

    assert authenticate(ts(store), f"Bearer {token}", Scope.SUBMIT) == row
    assert authenticate(ts(store), f"bearer  {token} ", Scope.READ) == row
    with pytest.raises(Forbidden, match="scope control"):
        authenticate(ts(store), f"Bearer {token}", Scope.CONTROL)

    clock.advance(10)
    assert revoke_token(ts(store), row.id, clock) is True
    assert revoke_token(ts(store), row.id, clock) is False  # already revoked: unchanged
    revoked = ts(store).token_by_digest(row.digest)
    assert revoked is not None and revoked.revoked_us == clock.now and not revoked.active
    with pytest.raises(Unauthorized, match="revoked"):
        authenticate(ts(store), f"Bearer {token}", Scope.READ)
    assert authenticate(ts(store), f"Bearer {other}", Scope.READ) == row2  # the other one still works
    with pytest.raises(NotFoundError, match="tokens list"):
        revoke_token(ts(store), "nope", clock)
    with pytest.raises(ConfigError, match="its id"):
        revoke_token(ts(store), other, clock)


def test_digests_and_ids_are_unique(store: Store, clock: FakeClock) -> None:
    _, row = create_token(ts(store), Scope.CONTROL, "a", clock)
    with pytest.raises(StoreError):
        ts(store).insert_token(TokenRow("other-id", "b", Scope.READ, row.digest, clock.now))
    with pytest.raises(StoreError):
        ts(store).insert_token(TokenRow(row.id, "b", Scope.READ, "0" * 64, clock.now))
    assert len(ts(store).list_tokens()) == 1
