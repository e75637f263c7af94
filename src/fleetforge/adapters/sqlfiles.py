"""Named SQL queries kept in `.sql` files beside the adapters (`-- name: query_name` markers)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["load_queries", "migrations"]

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Map each `-- name: x` marker in the package's SQL file to the statement that follows it."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip().rstrip(";").strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def migrations(package: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every `NNNN_name.sql` file in `package`.migrations, in order."""
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)
