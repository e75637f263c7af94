"""The ClickHouse SQL files of `deploy/clickhouse/`: located, read and split into statements.

`deploy/clickhouse/` is the single source: the package reads those files, it keeps no copy. They
are found, in order, under `FLEETFORGE_CLICKHOUSE_SQL_DIR`, beside the source tree of an editable
install (the repository's `deploy/clickhouse`), or under `<prefix>/share/fleetforge/clickhouse`
where a wheel installs them.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fleetforge.domain.errors import ConfigError

__all__ = [
    "VIEWS_FILE",
    "Migration",
    "ViewDef",
    "migrations",
    "split_statements",
    "sql_dir",
    "view_definitions",
    "views_sql",
]

VIEWS_FILE: Final = "materialized_views.sql"
ENV_DIR: Final = "FLEETFORGE_CLICKHOUSE_SQL_DIR"
_MIGRATION = re.compile(r"(\d{4})_(\w+)\.sql")
_VIEW = re.compile(
    r"CREATE\s+MATERIALIZED\s+VIEW\s+IF\s+NOT\s+EXISTS\s+(?P<view>[\w.]+)\s+TO\s+(?P<target>[\w.]+)\s+AS\s+"
    r"(?P<select>.*)$", re.IGNORECASE | re.DOTALL)
_FROM = re.compile(r"\bFROM\s+(telemetry\.\w+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ViewDef:
    """A materialized view of the views file: its name, target table, source table and SELECT."""

    view: str
    target: str
    source: str
    select: str


def _candidates() -> list[Path]:
    found: list[Path] = []
    env = os.environ.get(ENV_DIR)
    if env:
        found.append(Path(env))
    here = Path(__file__).resolve()
    if len(here.parents) > 4:
        found.append(here.parents[4] / "deploy" / "clickhouse")  # src/fleetforge/adapters/clickhouse
    found.append(Path(sys.prefix) / "share" / "fleetforge" / "clickhouse")
    return found


def sql_dir() -> Path:
    """The folder holding materialized_views.sql and migrations/; ConfigError when none is found."""
    tried = _candidates()
    for path in tried:
        if (path / VIEWS_FILE).is_file():
            return path
    raise ConfigError(
        f"cannot find the ClickHouse SQL files ({VIEWS_FILE} and migrations/): looked in "
        + ", ".join(str(p) for p in tried)
        + f"; set {ENV_DIR} to the repository's deploy/clickhouse folder"
    )


def split_statements(sql: str) -> list[str]:
    """Split a multi-statement file on `;` outside quotes and comments; comments are dropped."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    quote: str | None = None
    while i < n:
        ch = sql[i]
        if quote is not None:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(sql[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
            i += 1
            continue
        if ch in ("'", '"', "`"):
            quote = ch
            buf.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        elif ch == ";":
            text = "".join(buf).strip()
            if text:
                out.append(text)
            buf = []
        else:
            buf.append(ch)
        i += 1
    text = "".join(buf).strip()
    if text:
        out.append(text)
    return out


def migrations(folder: Path | None = None) -> list[Migration]:
    """Every `NNNN_name.sql` of `<sql dir>/migrations`, in version order."""
    base = (folder or sql_dir()) / "migrations"
    found = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        m = _MIGRATION.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda mig: mig.version)


def views_sql(folder: Path | None = None) -> str:
    """The text of materialized_views.sql."""
    return ((folder or sql_dir()) / VIEWS_FILE).read_text(encoding="utf-8")


def view_definitions(sql: str) -> list[ViewDef]:
    """The materialized views of a views file, with the SELECT each one runs on inserts."""
    views = []
    for statement in split_statements(sql):
        m = _VIEW.match(statement)
        if m is None:
            continue
        sources = _FROM.findall(m.group("select"))
        if len(sources) != 1:
            raise ConfigError(f"view {m.group('view')} must read exactly one telemetry table, found {sources}")
        views.append(ViewDef(m.group("view"), m.group("target"), sources[0], m.group("select").strip()))
    return views
