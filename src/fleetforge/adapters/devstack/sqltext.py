"""Just enough of ClickHouse's lexer to label an answer of the embedded HTTP endpoint: which output format
a query's FORMAT clause asks for (and how many statements and which first keyword it has).

String literals, quoted identifiers, comments and heredocs are skipped as ClickHouse skips them, so a
`;` or a `FORMAT` inside them counts for nothing. This decides nothing about what may run: that is
`chguard`, on ClickHouse's own parse of the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["QueryShape", "shape"]

_HEREDOC = re.compile(r"\$([A-Za-z_]\w*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class QueryShape:
    """What the lexer found: statements (non-empty ones), the first keyword, the FORMAT clause."""

    statements: int
    kind: str  # upper-case first keyword, "" for an empty query
    output_format: str | None  # the last top-level FORMAT <name>, as written


def _skip_quoted(sql: str, i: int, quote: str) -> int:
    """Index after the literal starting at `i` (backslash escapes and doubled quotes)."""
    n = len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _tokens(sql: str) -> list[tuple[str, str, int]]:
    """(kind, text, depth) for words and the punctuation that matters: ( ) ; and others as 'p'."""
    out: list[tuple[str, str, int]] = []
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif (c == "-" and sql.startswith("--", i)) or (
            c == "#" and (sql.startswith("#!", i) or sql.startswith("# ", i))
        ):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"`":
            j = _skip_quoted(sql, i, c)
            out.append(("s" if c == "'" else "w", sql[i:j], depth))
            i = j
        elif c == "$" and (m := _HEREDOC.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            i = n if end < 0 else end + len(m.group(0))
            out.append(("s", "", depth))
        elif m := _WORD.match(sql, i):
            out.append(("w", m.group(0), depth))
            i = m.end()
        else:
            if c == "(":
                out.append(("p", c, depth))
                depth += 1
            elif c == ")":
                depth = max(0, depth - 1)
                out.append(("p", c, depth))
            else:
                out.append(("p", c, depth))
            i += 1
    return out


def shape(sql: str) -> QueryShape:
    """Lex `sql` and report its statements, kind and output format."""
    tokens = _tokens(sql)
    statements, current = 0, 0
    for kind, text, depth in tokens:
        if kind == "p" and text == ";" and depth == 0:
            statements += current > 0
            current = 0
        else:
            current += 1
    statements += current > 0
    first = next((t for k, t, _ in tokens if k == "w" and not t.startswith(("`", '"'))), "")
    fmt = None
    for idx, (kind, text, depth) in enumerate(tokens[:-1]):
        nxt = tokens[idx + 1]
        if kind == "w" and depth == 0 and text.upper() == "FORMAT" and nxt[0] == "w":
            fmt = nxt[1].strip('`"')
    return QueryShape(statements, first.upper(), fmt)
