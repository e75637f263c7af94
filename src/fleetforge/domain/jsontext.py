"""Fast JSON text where it is provably the same as the standard library's.

orjson writes the same text as ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` for
plain JSON data (str, int, bool, None, lists, dicts with str keys) whose floats are 0 or have a
magnitude in [1e-4, 1e16): there both print the shortest round-trip digits in the same notation.
`plain` checks that; callers fall back to `json` for anything else.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

__all__ = ["MAX_DEPTH", "compact", "compact_plain", "fits", "parse", "plain"]

MAX_DEPTH: Final = 32  # deeper data (or a reference cycle) is left to `json`
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # each digit to 0, the rest to a space
_LONG_DIGITS = b"0" * 16  # in the translated text: an integer orjson may turn into a float (or a long fraction)
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME  # both raise, as in `json`


def plain(value: object, depth: int = 0) -> bool:
    """True when `value` is plain JSON data that orjson and `json` write alike (see the module)."""
    if type(value) is str or type(value) is int or type(value) is bool or value is None:
        return True
    if type(value) is float:
        a = abs(value)
        return a == 0.0 or 1e-4 <= a < 1e16  # NaN and infinities fail both tests
    if depth >= MAX_DEPTH:
        return False
    if type(value) is dict:
        for k in value:
            if type(k) is not str:
                return False
        items: Any = value.values()
    elif type(value) is list or type(value) is tuple:
        items = value
    else:
        items = None
    if items is not None:
        for v in items:  # scalars inline: a call per value would cost more than the check
            tv = type(v)
            if tv is str or tv is int or tv is bool or v is None:
                continue
            if tv is float:
                a = abs(v)
                if a == 0.0 or 1e-4 <= a < 1e16:
                    continue
                return False
            if not plain(v, depth + 1):
                return False
        return True
    # str and int enums and subclasses: both write their str / int value
    return isinstance(value, str | int) and not isinstance(value, float)


def compact(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, the same text, faster.

    orjson writes it first; only text where the two could differ is checked value by value (`plain`):
    text with a number in exponent form or below 1e-4, or a null (orjson's NaN and infinities), or
    only looking like one. Callers pass JSON data: orjson also writes UUIDs and enums `json` refuses.
    """
    try:
        raw = orjson.dumps(value, option=_STRICT)
    except (TypeError, orjson.JSONEncodeError):  # not JSON data, a lone surrogate, an integer over 64 bits
        return _standard(value)
    if raw[:1] in b"{[" and b"null" not in raw and b"e+" not in raw and b"e-" not in raw and b"0.0000" not in raw:
        return raw.decode()
    return raw.decode() if plain(value) else _standard(value)


def compact_plain(value: Any) -> str:
    """`compact` of a value the caller knows `plain` (without checking it again)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. a lone surrogate or an integer over 64 bits
        return _standard(value)


def _standard(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fits(value: Any, limit: int) -> bool:
    """True when ``len(json.dumps(value, default=str))`` is certainly at most `limit`.

    False means "not certain": compute it. For plain data the standard text is at most 4 characters
    per byte of orjson's (a space after each separator; a non-ASCII character of 2 to 4 UTF-8 bytes
    becomes one or two 6-character escapes).
    """
    if not plain(value):
        return False
    try:
        return 4 * len(orjson.dumps(value)) <= limit
    except (TypeError, orjson.JSONEncodeError):
        return False


def parse(text: str | bytes) -> Any:
    """``json.loads(text)``, the same value, faster: orjson reads JSON text to the same values except
    integers beyond 64 bits (it makes them floats), which a run of 16 digits rules out, and what it
    refuses (NaN, Infinity, lone surrogates...), left to `json`."""
    raw = text.encode() if isinstance(text, str) else text
    if _LONG_DIGITS not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
