"""Secrets masked for messages and logs: the one module that does it.

Every URL, header set, setting or error text that may be printed or logged passes through here:
- `redact_url`: ``scheme://user:***@host/path?key=***#***``, the password, every query value and the
  fragment hidden (API keys travel in all three);
- `redact_text`: free text (an exception message, a log line) with the known secret values, every URL
  in it (as `redact_url`) and ``password=…``-like pairs hidden;
- FleetForge API tokens (``fft_…``, domain/tokens.py) wherever they appear in text;
- `redact_headers` / `redact_mapping`: header or setting values hidden when their name looks secret
  (Authorization, X-Api-Key, Cookie, ...password / secret / token / key...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from fleetforge.domain.tokens import TOKEN_PATTERN

__all__ = ["MASK", "is_secret_name", "redact_headers", "redact_mapping", "redact_text", "redact_url"]

MASK: Final = "***"
MIN_SECRET_CHARS: Final = 4  # shorter "secrets" would mask ordinary words and digits

_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_.]?key|apikey|access[-_.]?key|private|"
    r"authorization|cookie|credential|signature|jaas|keystore|key\.pem",
    re.IGNORECASE,
)
# scheme://anything-up-to-whitespace-or-a-quote, e.g. inside "for url 'https://h/?api_key=x'"
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# password=hunter2, api_key: sk-..., "token": "..." (keyword DSNs, query strings, JSON-ish text)
_PAIR_IN_TEXT = re.compile(
    r"(?P<key>\b(?:[\w-]*[_.-])?(?:password|passwd|pwd|secret(?:[_-]?key)?|token|api[-_]?key|apikey"
    r"|access[-_]?key)\b)"
    r"(?P<sep>[\"']?\s*[=:]\s*[\"']?)(?P<value>[^\s&,;'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """True when a header, setting or parameter named `name` carries a secret (Authorization, api_key...)."""
    return _SECRET_NAME.search(name) is not None


def redact_url(url: str) -> str:
    """`url` with its password, every query value and its fragment replaced by ``***``.

    Works on text that is not a valid URL too (a bad port, no scheme): it never raises and never
    returns a secret it was given.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, hash_, fragment = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else f"{userinfo}@{host}"
        if not colon and _looks_like_token(userinfo):
            authority = f"{MASK}@{host}"  # https://TOKEN@host: the user name is the secret
    if qmark:
        query = "&".join(_mask_param(p) for p in query.split("&"))
    return (
        f"{scheme}{sep}{authority}{slash}{path}{qmark}{query}" + (f"{hash_}{MASK}" if hash_ and fragment else hash_)
    )


def _mask_param(param: str) -> str:
    key, eq, value = param.partition("=")
    if not eq:
        return MASK if param else param  # a bare value (?sk-abc) may be the secret itself
    return f"{key}={MASK}" if value else param


def _looks_like_token(user: str) -> bool:
    return len(user) >= 16 and any(c.isdigit() for c in user)


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with the given secret values, API tokens, every URL's secrets and ``key=secret`` pairs hidden."""
    for secret in sorted((s for s in secrets if s and len(s) >= MIN_SECRET_CHARS), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    text = TOKEN_PATTERN.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _PAIR_IN_TEXT.sub(
        lambda m: m.group(0) if m.group("value") == MASK else f"{m.group('key')}{m.group('sep')}{MASK}", text
    )


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """`headers` with the values of secret-looking names (Authorization, X-Api-Key, ...) hidden."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (MASK if is_secret_name(k) else redact_text(v)) for k, v in items}


def redact_mapping(values: Mapping[str, str]) -> dict[str, str]:
    """Settings (e.g. Kafka client properties) with the values of secret-looking keys hidden."""
    return {k: (MASK if is_secret_name(k) else v) for k, v in values.items()}
