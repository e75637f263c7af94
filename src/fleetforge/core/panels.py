"""Expand dashboard panel SQL the way Grafana's ClickHouse plugin does, so the built-in dashboard and
the tests run the very queries Grafana runs.

Supported: `$__timeFilter(col)`, `$__fromTime`, `$__toTime`, `$__interval_s`,
`$__timeInterval(col)` and template variables `${name:singlequote}` / `$name`. Values are quoted
as ClickHouse string literals, so no value can change the query's structure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["PanelQuery", "expand", "quote"]


def quote(value: str) -> str:
    """A ClickHouse string literal for `value`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """The context a panel query is expanded in (Unix seconds; variables hold selected values)."""

    time_from: int
    time_to: int
    interval_s: int = 60
    variables: Mapping[str, Sequence[str]] = field(default_factory=dict)


_FUNCS = re.compile(r"\$__(timeFilter|timeInterval)\(\s*([A-Za-z_][\w.]*)\s*\)")
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)\b")


def expand(sql: str, q: PanelQuery) -> str:
    """Replace the macros and variables in `sql`; unknown variables raise KeyError."""

    def func(m: re.Match[str]) -> str:
        name, col = m.group(1), m.group(2)
        if name == "timeFilter":
            return f"{col} >= toDateTime({q.time_from}) AND {col} <= toDateTime({q.time_to})"
        return f"toStartOfInterval(toDateTime({col}), INTERVAL {q.interval_s} second)"

    sql = _FUNCS.sub(func, sql)
    sql = (sql.replace("$__fromTime", f"toDateTime({q.time_from})")
              .replace("$__toTime", f"toDateTime({q.time_to})")
              .replace("$__interval_s", str(q.interval_s)))

    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name.startswith("__"):
            return m.group(0)
        values = list(q.variables[name])
        return ",".join(quote(v) for v in values) if values else "''"

    return _VAR.sub(var, sql)
