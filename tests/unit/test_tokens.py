"""API tokens: format, scope order, the Authorization header check (on an in-memory token table), and the
one redactor masking tokens wherever they appear."""

from __future__ import annotations

import pytest

from fleetforge.core.tokens import authenticate
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.secrets import redact_headers, redact_text
from fleetforge.domain.tokens import (
    TOKEN_PATTERN,
    Forbidden,
    Scope,
    TokenRow,
    Unauthorized,
    check_name,
    hash_token,
    is_well_formed,
    new_token,
    parse_scope,
)


class Table:
    """An in-memory TokenStore."""

    def __init__(self) -> None:
        self.rows: dict[str, TokenRow] = {}

    def insert_token(self, row: TokenRow) -> None:
        self.rows[row.digest] = row

    def list_tokens(self) -> list[TokenRow]:
        return list(self.rows.values())

    def token_by_digest(self, digest: str) -> TokenRow | None:
        return self.rows.get(digest)

    def revoke_token(self, token_id: str, now_us: int) -> bool:
        return False


def test_new_tokens_have_the_format_and_only_their_hash_is_kept() -> None:
    token, row = new_token("ci", Scope.SUBMIT, 7)
    other, _ = new_token("ci", Scope.SUBMIT, 7)
    assert token != other and is_well_formed(token) and TOKEN_PATTERN.fullmatch(token)
    assert len(token) == 4 + 43 and token.startswith("fft_")
    assert row.digest == hash_token(token) and len(row.digest) == 64 and token not in repr(row)
    assert len(row.id) == 12 and row.scope is Scope.SUBMIT and row.created_us == 7 and row.active


@pytest.mark.parametrize(("have", "need", "ok"), [
    (have, need, [Scope.READ, Scope.SUBMIT, Scope.CONTROL].index(have)
     >= [Scope.READ, Scope.SUBMIT, Scope.CONTROL].index(need))
    for have in Scope for need in Scope])
def test_scopes_are_ordered_read_submit_control(have: Scope, need: Scope, ok: bool) -> None:
    assert have.allows(need) is ok
    table = Table()
    token, row = new_token("x", have, 1)
    table.insert_token(row)
    if ok:
        assert authenticate(table, f"Bearer {token}", need) == row
    else:
        with pytest.raises(Forbidden, match=f"scope {need.value}"):
            authenticate(table, f"Bearer {token}", need)


@pytest.mark.parametrize(("header", "words"), [
    (None, "no bearer token"),
    ("", "no bearer token"),
    ("Basic dXNlcjpwYXNz", "not a bearer token"),
    ("Bearer", "not a bearer token"),
    ("Bearer hunter2", "not a FleetForge token"),
    ("Bearer fft_" + "A" * 42, "not a FleetForge token"),
    ("Bearer fft_" + "A" * 43, "unknown bearer token"),
])
def test_bad_authorization_headers_are_unauthorized_without_echoing_them(header: str | None, words: str) -> None:
    with pytest.raises(Unauthorized, match=words) as caught:
        authenticate(Table(), header, Scope.READ)
    assert "hunter2" not in str(caught.value) and "A" * 20 not in str(caught.value)


def test_scope_and_name_checks_name_the_fix() -> None:
    assert parse_scope("control") is Scope.CONTROL
    with pytest.raises(ConfigError, match="--scope: got 'admin', expected one of read, submit, control"):
        parse_scope("admin", "--scope")
    assert check_name("ci bot@acme/prod") == "ci bot@acme/prod"
    for bad in ("", "x" * 65, "a\nb", "<script>"):
        with pytest.raises(ConfigError, match="--name"):
            check_name(bad)


def test_the_redactor_masks_tokens_wherever_they_are() -> None:
    token, _ = new_token("x", Scope.READ, 1)
    for text in (f"GET /v1/runs/{token}/events failed", f"token={token}", f"Authorization: Bearer {token}",
                 f'{{"t": "{token}"}}', f"http://h/?x={token}", f"x{token}y"):
        shown = redact_text(text)
        assert token not in shown and token[4:24] not in shown, shown
    assert redact_headers({"Authorization": f"Bearer {token}"}) == {"Authorization": "***"}
    assert redact_text("fft_short and ffts") == "fft_short and ffts"
