"""The one secret-redaction module: URLs, free text, headers and settings."""

from __future__ import annotations

import pytest

from fleetforge.domain.secrets import is_secret_name, redact_headers, redact_mapping, redact_text, redact_url

SECRET = "sk-SECRET123"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ch:8123", "http://ch:8123"),
        ("https://u:secret@ch.example:8443/db", "https://u:***@ch.example:8443/db"),
        ("mysql://u:hunter2@h/db", "mysql://u:***@h/db"),
        ("mysql://u@h/db", "mysql://u@h/db"),
        (f"http://127.0.0.1:1/?api_key={SECRET}", "http://127.0.0.1:1/?api_key=***"),
        (f"https://h/p?x=1&token={SECRET}#{SECRET}", "https://h/p?x=***&token=***#***"),
        (f"https://h/#{SECRET}", "https://h/#***"),
        (f"https://h/?{SECRET}", "https://h/?***"),
        (f"https://u:{SECRET}@h:99999/x?k={SECRET}", "https://u:***@h:99999/x?k=***"),  # invalid port
        (f"https://{SECRET}SECRET123456@h/", "https://***@h/"),  # a token as the user name
        (f"u:{SECRET}@h:5432/db", "u:***@h:5432/db"),  # no scheme
        ("sqlite:////tmp/x/state.db", "sqlite:////tmp/x/state.db"),
        ("", ""),
    ],
)
def test_redact_url_hides_passwords_query_values_and_fragments(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "text",
    [
        f"Client error '404 Not Found' for url 'http://h/x?api_key={SECRET}'",
        f"connection refused: https://user:{SECRET}@h:443/v1",
        f"host=h password={SECRET} dbname=x",
        f'{{"api_key": "{SECRET}"}}',
        f"Authorization: Bearer {SECRET}",
        f"the key {SECRET} was refused",  # a known secret value, wherever it is
    ],
)
def test_redact_text_hides_every_secret(text: str) -> None:
    shown = redact_text(text, [SECRET])
    assert SECRET not in shown
    assert "***" in shown


def test_redact_text_leaves_ordinary_text_alone() -> None:
    text = "FLEETFORGE_APP_BUDGETS: got 'acme/bot=tokens:5,cost:1', expected limits >= 0 (max_tokens: 3)"
    assert redact_text(text, ["", None, "ab"]) == text  # empty and too-short secrets are ignored


def test_headers_and_settings_with_secret_names_are_hidden() -> None:
    headers = {"Authorization": "Bearer x", "X-Api-Key": "k", "Cookie": "c", "Content-Type": "application/json",
               "Langfuse-Public-Key": "pk", "X-Langsmith-Api-Key": "k2"}
    assert redact_headers(headers) == {"Authorization": "***", "X-Api-Key": "***", "Cookie": "***",
                                       "Content-Type": "application/json", "Langfuse-Public-Key": "pk",
                                       "X-Langsmith-Api-Key": "***"}
    props = {"sasl.password": "p", "ssl.key.password": "p", "sasl.jaas.config": "j", "client.id": "c",
             "session.timeout.ms": "6000", "ssl.keystore.location": "/k"}
    assert redact_mapping(props) == {"sasl.password": "***", "ssl.key.password": "***", "sasl.jaas.config": "***",
                                     "client.id": "c", "session.timeout.ms": "6000", "ssl.keystore.location": "***"}
    assert is_secret_name("PHOENIX_API_KEY") and not is_secret_name("PHOENIX_BASE_URL")
