"""Apply the ClickHouse schema (versioned migrations, then the views file) and backfill derived tables.

`apply` is idempotent: migrations are recorded in `telemetry.schema_migrations` and run once;
every statement of `materialized_views.sql` is `IF NOT EXISTS`, so the file runs on every apply.
`backfill` re-derives the derived tables from the raw ones with the very SELECT of each view, after
deleting what the tables held for the same period, so running it twice never doubles a number.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Final

from fleetforge.adapters.stores import sqlfiles
from fleetforge.adapters.stores.sqlfiles import Migration, split_statements
from fleetforge.domain.errors import ConfigError
from fleetforge.ports.analytics import AnalyticsStore

__all__ = [
    "PACKAGE",
    "VIEWS_FILE",
    "ApplyReport",
    "BackfillReport",
    "ViewDef",
    "apply_schema",
    "backfill",
    "changed_views",
    "derived_tables",
    "migrations",
    "schema_version",
    "view_definitions",
    "views_sql",
]

log = logging.getLogger("fleetforge.analytics")

PACKAGE: Final = "fleetforge.adapters.readers.clickhouse"  # ships migrations/ and the views file
VIEWS_FILE: Final = "materialized_views.sql"  # the same file as deploy/clickhouse/materialized_views.sql
VIEWS_VERSION: Final = 9999  # the row of schema_migrations recording the views file's checksum
_BOOKKEEPING = (
    "CREATE DATABASE IF NOT EXISTS telemetry",
    "CREATE TABLE IF NOT EXISTS telemetry.schema_migrations (version UInt32, name String, checksum String, "
    "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(applied_at) ORDER BY version",
)
_RECORD = ("INSERT INTO telemetry.schema_migrations (version, name, checksum) "
           "SELECT {version:UInt32}, {name:String}, {checksum:String}")


_VIEW = re.compile(
    r"CREATE\s+MATERIALIZED\s+VIEW\s+IF\s+NOT\s+EXISTS\s+(?P<view>[\w.]+)\s+TO\s+(?P<target>[\w.]+)\s+AS\s+"
    r"(?P<select>.*)$", re.IGNORECASE | re.DOTALL)
_FROM = re.compile(r"\bFROM\s+(telemetry\.\w+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ViewDef:
    """A materialized view of the views file: its name, target table, source table and SELECT."""

    view: str
    target: str
    source: str
    select: str


def migrations() -> list[Migration]:
    """The ClickHouse migrations shipped in the package."""
    return sqlfiles.migrations(PACKAGE)


def views_sql() -> str:
    """The text of the package's materialized_views.sql."""
    return sqlfiles.package_text(PACKAGE, VIEWS_FILE)


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


@dataclass(slots=True)
class ApplyReport:
    version: int = 0
    applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    views: int = 0
    changed: list[str] = field(default_factory=list)  # derived tables/views whose definition changed
    rebuilt: list[str] = field(default_factory=list)  # derived tables dropped or emptied and backfilled


@dataclass(slots=True)
class BackfillReport:
    since: dt.datetime | None
    tables: dict[str, int] = field(default_factory=dict)  # derived table -> rows after backfill


def _recorded(store: AnalyticsStore) -> dict[int, str]:
    rows = store.rows("SELECT version, argMax(checksum, applied_at) FROM telemetry.schema_migrations "
                      "GROUP BY version")
    return {int(v): str(c) for v, c in rows}


def schema_version(store: AnalyticsStore) -> int:
    """The highest migration applied (0 when none)."""
    try:
        done = _recorded(store)
    except Exception:
        return 0
    return max((v for v in done if v != VIEWS_VERSION), default=0)


class _ClickHouseMigrations:
    """An analytics store as a `sqlfiles.MigrationTarget` (ClickHouse has no transactions: a migration
    interrupted midway re-runs whole, so write its statements to be safe to re-run: `IF NOT EXISTS`)."""

    def __init__(self, store: AnalyticsStore) -> None:
        self.store = store

    def prepare(self) -> None:
        for statement in _BOOKKEEPING:
            self.store.execute(statement)

    def applied(self) -> dict[int, str]:
        return {v: c for v, c in _recorded(self.store).items() if v != VIEWS_VERSION}

    def record_checksum(self, migration: Migration) -> None:
        self.store.execute(_RECORD, {"version": migration.version, "name": migration.name,
                                     "checksum": migration.checksum})

    def apply(self, migration: Migration, statements: list[str]) -> bool:
        for statement in statements:
            self.store.execute(statement)
        self.record_checksum(migration)
        return True


_SCRATCH: Final = "telemetry_views_check"
_HEAD = re.compile(r"(IF\s+NOT\s+EXISTS\s+|\bTO\s+)telemetry\.(\w+)", re.IGNORECASE)


def changed_views(store: AnalyticsStore, text: str | None = None) -> list[str]:
    """The derived tables and views of the views file whose definition in `telemetry` differs from the file.

    The file's objects are created in a scratch database (same sources) and compared with the live ones
    as ClickHouse itself describes them: table columns and engine, view SELECTs. Absent objects are not
    changed (apply creates them)."""
    statements = split_statements(text if text is not None else views_sql())
    store.execute(f"DROP DATABASE IF EXISTS {_SCRATCH}")
    store.execute(f"CREATE DATABASE {_SCRATCH}")
    try:
        names: list[str] = []
        for statement in statements:
            m = _HEAD.search(statement)
            if m is None:
                continue
            names.append(m.group(2))
            store.execute(_HEAD.sub(lambda g: f"{g.group(1)}{_SCRATCH}.{g.group(2)}", statement, count=2))

        def describe(database: str) -> dict[str, tuple[object, ...]]:
            found: dict[str, tuple[object, ...]] = {}
            for name, engine, select in store.rows(
                    "SELECT name, engine_full, as_select FROM system.tables WHERE database = {db:String}",
                    {"db": database}):
                cols = store.rows("SELECT name, type, default_expression FROM system.columns WHERE database = "
                                  "{db:String} AND table = {t:String} ORDER BY position", {"db": database, "t": name})
                found[str(name)] = (str(select) if select else str(engine), tuple(map(tuple, cols)))
            return found

        live, want = describe("telemetry"), describe(_SCRATCH)
        return [f"telemetry.{n}" for n in names if n in live and live[n] != want.get(n)]
    finally:
        store.execute(f"DROP DATABASE IF EXISTS {_SCRATCH}")


def apply_schema(store: AnalyticsStore, *, rebuild_changed: bool = False) -> ApplyReport:
    """Run pending migrations, then the views file; returns what was done.

    When the views file changed since it was last applied, `report.changed` names the derived tables and
    views whose live definition differs; with `rebuild_changed` those are dropped, re-created and their
    tables backfilled (`report.rebuilt`). Raises `MigrationChanged` (naming the file) when an applied
    migration's file has changed."""
    report = ApplyReport()
    report.applied = sqlfiles.migrate(_ClickHouseMigrations(store), migrations())
    done = _recorded(store)
    text = views_sql()
    checksum = sqlfiles.checksum(text)
    if done.get(VIEWS_VERSION, checksum) != checksum or rebuild_changed:
        report.changed = changed_views(store, text)
    if report.changed and rebuild_changed:
        report.rebuilt = _drop_changed(store, text, report.changed)
    elif report.changed:
        report.warnings.append(
            f"materialized_views.sql changed since it was last applied: {', '.join(report.changed)} keep their "
            "old definition (statements are IF NOT EXISTS); stop the sink and run `fleetforge analytics apply "
            "--rebuild-changed` to drop, re-create and backfill only those")
    keep = set() if rebuild_changed else set(report.changed) | {
        v.view for v in view_definitions(text) if v.target in report.changed}
    for statement in split_statements(text):
        m = _HEAD.search(statement)
        if m is None or f"telemetry.{m.group(2)}" not in keep:
            store.execute(statement)
    report.views = len(view_definitions(text))

    if report.rebuilt:
        backfill(store, tables=report.rebuilt)
    if not keep:  # a file some of whose objects were kept is compared again on the next apply
        store.execute(_RECORD, {"version": VIEWS_VERSION, "name": "materialized_views", "checksum": checksum})
    report.version = schema_version(store)
    for warning in report.warnings:
        log.warning("%s", warning)
    return report


def _drop_changed(store: AnalyticsStore, text: str, changed: list[str]) -> list[str]:
    """Drop the changed tables (with every view writing to them) and changed views; the tables to backfill."""
    views = view_definitions(text)
    tables = list(dict.fromkeys(v.target for v in views if v.view in changed or v.target in changed))
    for view in views:
        if view.target in tables:
            store.execute(f"DROP VIEW IF EXISTS {view.view}")
    for table in tables:
        if table in changed:
            store.execute(f"DROP TABLE IF EXISTS {table}")
    return tables


def derived_tables() -> list[str]:
    """The tables the views file's materialized views write to, in file order."""
    return list(dict.fromkeys(v.target for v in view_definitions(views_sql())))


def _rederive(view: ViewDef, since: dt.datetime | None) -> tuple[str, dict[str, object]]:
    alias = view.source.split(".", 1)[1]
    where = " WHERE occurred_at >= toStartOfMinute({since:DateTime64(6, 'UTC')})" if since else ""
    source = f"(SELECT * FROM {view.source} FINAL{where}) AS {alias}"
    head, sep, tail = view.select.partition(f"FROM {view.source}")
    if not sep:
        raise ValueError(f"view {view.view}: no 'FROM {view.source}' in its SELECT")
    return f"INSERT INTO {view.target} {head}FROM {source}{tail}", ({"since": since} if since else {})


def backfill(store: AnalyticsStore, since: dt.datetime | None = None,
             tables: list[str] | None = None) -> BackfillReport:
    """Re-derive every derived table (or only `tables`) from the raw tables (from `since`, a UTC time, when given).

    Stop the sink while it runs: events inserted during a backfill may be counted twice.
    """
    if since is not None and since.tzinfo is not None:
        since = since.astimezone(dt.UTC).replace(tzinfo=None)
    views = [v for v in view_definitions(views_sql()) if tables is None or v.target in tables]
    targets = list(dict.fromkeys(v.target for v in views))
    for table in targets:
        if since is None:
            store.execute(f"TRUNCATE TABLE {table}")
        else:
            store.execute(f"ALTER TABLE {table} DELETE WHERE bucket >= toStartOfMinute({{since:DateTime64(6, 'UTC')}}) "
                          "SETTINGS mutations_sync = 2", {"since": since})
    for view in views:
        sql, params = _rederive(view, since)
        columns = ", ".join(str(r[0]) for r in store.rows(f"DESCRIBE TABLE {view.view}"))
        store.execute(sql.replace(f"INSERT INTO {view.target} ", f"INSERT INTO {view.target} ({columns}) ", 1),
                      params)
    report = BackfillReport(since)
    for table in targets:
        report.tables[table] = int(store.rows(f"SELECT count() FROM {table}")[0][0])
    return report
