"""The one loader, statement splitter and migrator of the SQL files shipped as package data.

Every `.sql` file lives beside the adapter that runs it (`fleetforge.adapters.<store>`), so an
installed wheel finds it through `importlib.resources` with no path search. `load_queries` reads
named statements (`-- name: x` markers), `migrations` a package's `migrations/NNNN_name.sql`,
`split_statements` cuts a file into statements, and `migrate` applies pending migrations through a
`MigrationTarget` (SQLite, PostgreSQL, ClickHouse), recording each one's checksum and refusing to
start when an applied migration's file has changed since.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Protocol

from fleetforge.domain.errors import ConfigError

__all__ = [
    "Migration",
    "MigrationChanged",
    "MigrationTarget",
    "checksum",
    "load_queries",
    "migrate",
    "migrations",
    "package_text",
    "split_statements",
    "verify",
]

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"(\d{4})_(\w+)\.sql")


def checksum(text: str) -> str:
    """The checksum recorded for an applied SQL file: 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Migration:
    """One `NNNN_name.sql` file: its version, name, text and where it was read from."""

    version: int
    name: str
    sql: str
    source: str = ""

    @property
    def checksum(self) -> str:
        return checksum(self.sql)

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


class MigrationChanged(ConfigError):
    """An applied migration's file differs from what was applied: the store refuses to start."""

    def __init__(self, migration: Migration, recorded: str) -> None:
        self.migration = migration
        super().__init__(
            f"migration file {migration.source or migration.label + '.sql'} changed after it was applied "
            f"(recorded checksum {recorded}, file now {migration.checksum}): applied migrations are never "
            "re-run, so restore the file as it was and put the change in a new migration"
        )


def package_text(package: str, filename: str) -> str:
    """The text of a SQL file shipped in `package`."""
    return resources.files(package).joinpath(filename).read_text(encoding="utf-8")


@cache
def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Map each `-- name: x` marker in the package's SQL file to the statement that follows it."""
    parts = _NAME.split(package_text(package, filename))
    return {name: body.strip().rstrip(";").strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def migrations(package: str) -> list[Migration]:
    """Every `NNNN_name.sql` file of `package`.migrations, in version order."""
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8"), str(entry)))
    return sorted(found, key=lambda mig: mig.version)


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
            _flush(buf, out)
            buf = []
        else:
            buf.append(ch)
        i += 1
    _flush(buf, out)
    return out


def _flush(buf: list[str], out: list[str]) -> None:
    text = "".join(buf).strip()
    if text:
        out.append(text)


class MigrationTarget(Protocol):
    """What `migrate` needs of a store: its bookkeeping, the applied versions, and applying one."""

    def prepare(self) -> None:
        """Create the bookkeeping table (with its checksum column) when missing."""

    def applied(self) -> Mapping[int, str]:
        """Applied version -> recorded checksum ("" for versions applied before checksums were kept)."""

    def record_checksum(self, migration: Migration) -> None:
        """Record the checksum of a migration applied before checksums were kept."""

    def apply(self, migration: Migration, statements: list[str]) -> bool:
        """Run and record `migration` atomically where the store can; False when another process did."""


def verify(migration: Migration, recorded: str) -> None:
    """Raise `MigrationChanged` when an applied migration's recorded checksum is not its file's."""
    if recorded and recorded != migration.checksum:
        raise MigrationChanged(migration, recorded)


def migrate(target: MigrationTarget, pending: list[Migration]) -> list[str]:
    """Apply what `target` lacks of `pending`, in order; return the labels applied.

    Applied migrations are checked first, all of them, so a changed file stops the store before any
    new migration runs. Versions applied before checksums were kept get their file's checksum now.
    """
    target.prepare()
    done = target.applied()
    for mig in pending:
        if mig.version in done:
            verify(mig, done[mig.version])
    ran: list[str] = []
    for mig in pending:
        if mig.version in done:
            if not done[mig.version]:
                target.record_checksum(mig)
            continue
        if target.apply(mig, split_statements(mig.sql)):
            ran.append(mig.label)
    return ran
