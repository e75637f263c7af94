"""The one parser of settings given as text (FLEETFORGE_* and OTEL_* env vars, and their flags).

Each function takes the text and the name it came from, and raises `ConfigError` as
`NAME: got 'VALUE', expected WHAT` so the operator sees which variable, what it held and what fits.
`value(env, name)` reads a variable: None when unset or blank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Final

from fleetforge.domain.errors import ConfigError

__all__ = [
    "OFF_WORDS",
    "boolean",
    "byte_size",
    "comma_list",
    "duration",
    "format_duration",
    "integer",
    "number",
    "value",
]

TRUE: Final = frozenset({"1", "true", "yes", "on"})
FALSE: Final = frozenset({"0", "false", "no", "off"})
OFF_WORDS: Final = frozenset({"0", "off", "never", "forever", "none"})
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_BYTES: Final = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
                 "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def _fail(name: str, text: str, expected: str) -> ConfigError:
    return ConfigError(f"{name}: got {text!r:.80}, expected {expected}")


def value(env: Mapping[str, str], name: str) -> str | None:
    """The variable's text, stripped; None when it is unset or blank."""
    raw = env.get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def _show(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _expected(kind: str, unit: str, lo: float | None, hi: float | None, default: object) -> str:
    text = kind + (f" of {unit}" if unit else "")
    if lo is not None and hi is not None:
        text += f" from {_show(lo)} to {_show(hi)}"
    elif lo is not None:
        text += f" >= {_show(lo)}"
    elif hi is not None:
        text += f" <= {_show(hi)}"
    return text + (f" (default {default})" if default is not None else "")


def integer(text: str, name: str, *, lo: int | None = None, hi: int | None = None, unit: str = "",
            default: object = None, what: str = "a whole number") -> int:
    """A whole number within [lo, hi]; `unit`, `default` and `what` only shape the message."""
    try:
        parsed = int(text.strip())
    except ValueError:
        parsed = None
    if parsed is None or (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
        raise _fail(name, text, _expected(what, unit, lo, hi, default))
    return parsed


def number(text: str, name: str, *, lo: float | None = None, hi: float | None = None, unit: str = "",
           default: object = None) -> float:
    """A finite number within [lo, hi] (NaN and infinities are refused)."""
    try:
        parsed = float(text.strip())
    except ValueError:
        parsed = math.nan
    if not math.isfinite(parsed) or (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
        raise _fail(name, text, _expected("a finite number", unit, lo, hi, default))
    return parsed


def boolean(text: str, name: str) -> bool:
    """true/false, also 1/0, yes/no, on/off (any case)."""
    word = text.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise _fail(name, text, "true or false (also 1/0, yes/no, on/off)")


def duration(text: str, name: str, *, allow_off: bool = True) -> float | None:
    """Seconds from `90s`, `15m`, `1h`, `7d`, `2w`, `250ms` or a bare number of seconds.

    `0`, `off` (also `never`, `forever`, `none`) give None (keep forever) when `allow_off`; otherwise
    a positive duration is required.
    """
    raw = text.strip().lower()
    positive = "a positive duration such as 90s, 15m, 1h, 7d"
    if raw in OFF_WORDS:
        if allow_off:
            return None
        raise _fail(name, text, positive)
    m = _DURATION.match(raw)
    if m is None:
        raise _fail(name, text, "a duration such as 90s, 15m, 1h, 7d (or 0/off to keep forever)" if allow_off
                    else positive)
    seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if seconds <= 0:
        return duration("0", name, allow_off=allow_off)
    return seconds


def format_duration(seconds: float | None) -> str:
    """`1h`, `7d`, `90s`... (`off` for None): the shortest exact form `duration` reads back."""
    if seconds is None:
        return "off"
    for unit in ("d", "h", "m", "s"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"


def byte_size(text: str, name: str, *, lo: int = 0, hi: int | None = None) -> int:
    """Bytes from `512`, `64KiB`, `10MB`, `1g` (binary units: K, M, G are 1024-based)."""
    m = _SIZE.match(text)
    unit = _BYTES.get(m.group(2).lower()) if m else None
    limit = f" from {lo} to {hi} bytes" if hi is not None else ""
    if m is None or unit is None:
        raise _fail(name, text, f"a size such as 512, 64KiB, 10MiB, 1GiB{limit}")
    size = int(m.group(1)) * unit
    if size < lo or (hi is not None and size > hi):
        raise _fail(name, text, f"a size{limit or f' >= {lo} bytes'}")
    return size


def comma_list(text: str, name: str, *, allowed: Collection[str] | None = None, lower: bool = True) -> tuple[str, ...]:
    """The non-empty comma-separated items, in order without repeats; each one of `allowed` when given."""
    items = tuple(dict.fromkeys(i.strip().lower() if lower else i.strip() for i in text.split(",") if i.strip()))
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ConfigError(f"{name}: got {', '.join(bad)}, expected a comma-separated subset of "
                              f"{', '.join(allowed)}")
    return items
