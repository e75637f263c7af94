"""Apply the ClickHouse schema (versioned migrations, then the views file) and backfill derived tables.

`apply` is idempotent: migrations are recorded in `telemetry.schema_migrations` and run once;
every statement of `materialized_views.sql` is `IF NOT EXISTS`, so the file runs on every apply.
`backfill` re-derives the derived tables from the raw ones with the very SELECT of each view, after
deleting what the tables held for the same period, so running it twice never doubles a number.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fleetforge.adapters.clickhouse.sqlfiles import (
    Migration,
    ViewDef,
    migrations,
    split_statements,
    view_definitions,
    views_sql,
)
from fleetforge.ports.analytics import AnalyticsStore

__all__ = ["ApplyReport", "BackfillReport", "apply_schema", "backfill", "derived_tables", "schema_version"]

log = logging.getLogger("fleetforge.analytics")

VIEWS_VERSION: Final = 9999  # the row of schema_migrations recording the views file's checksum
_BOOKKEEPING = (
    "CREATE DATABASE IF NOT EXISTS telemetry",
    "CREATE TABLE IF NOT EXISTS telemetry.schema_migrations (version UInt32, name String, checksum String, "
    "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(applied_at) ORDER BY version",
)
_RECORD = ("INSERT INTO telemetry.schema_migrations (version, name, checksum) "
           "SELECT {version:UInt32}, {name:String}, {checksum:String}")


@dataclass(slots=True)
class ApplyReport:
    version: int = 0
    applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    views: int = 0


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


def apply_schema(store: AnalyticsStore, folder: Path | None = None) -> ApplyReport:
    """Run pending migrations, then the views file; returns what was done."""
    report = ApplyReport()
    for statement in _BOOKKEEPING:
        store.execute(statement)
    done = _recorded(store)
    for mig in migrations(folder):
        if mig.version in done:
            if done[mig.version] != mig.checksum:
                report.warnings.append(f"migration {mig.version:04d}_{mig.name} changed after it was applied "
                                       "(applied migrations are never re-run; add a new migration instead)")
            continue
        for statement in split_statements(mig.sql):
            store.execute(statement)
        store.execute(_RECORD, {"version": mig.version, "name": mig.name, "checksum": mig.checksum})
        report.applied.append(f"{mig.version:04d}_{mig.name}")
    text = views_sql(folder)
    checksum = Migration(VIEWS_VERSION, "views", text).checksum
    if done.get(VIEWS_VERSION, checksum) != checksum:
        report.warnings.append(
            "materialized_views.sql changed since it was last applied: existing derived tables and views keep "
            "their old definition (statements are IF NOT EXISTS); drop the changed ones, run `fleetforge "
            "analytics apply`, then `fleetforge analytics backfill`")
    statements = split_statements(text)
    for statement in statements:
        store.execute(statement)
    report.views = len(view_definitions(text))

    store.execute(_RECORD, {"version": VIEWS_VERSION, "name": "materialized_views", "checksum": checksum})
    report.version = schema_version(store)
    for warning in report.warnings:
        log.warning("%s", warning)
    return report


def derived_tables(folder: Path | None = None) -> list[str]:
    """The tables the views file's materialized views write to, in file order."""
    return list(dict.fromkeys(v.target for v in view_definitions(views_sql(folder))))


def _rederive(view: ViewDef, since: dt.datetime | None) -> tuple[str, dict[str, object]]:
    alias = view.source.split(".", 1)[1]
    where = " WHERE occurred_at >= toStartOfMinute({since:DateTime64(6, 'UTC')})" if since else ""
    source = f"(SELECT * FROM {view.source} FINAL{where}) AS {alias}"
    head, sep, tail = view.select.partition(f"FROM {view.source}")
    if not sep:
        raise ValueError(f"view {view.view}: no 'FROM {view.source}' in its SELECT")
    return f"INSERT INTO {view.target} {head}FROM {source}{tail}", ({"since": since} if since else {})


def backfill(store: AnalyticsStore, since: dt.datetime | None = None, folder: Path | None = None) -> BackfillReport:
    """Re-derive every derived table from the raw tables (from `since`, a UTC time, when given).

    Stop the sink while it runs: events inserted during a backfill may be counted twice.
    """
    if since is not None and since.tzinfo is not None:
        since = since.astimezone(dt.UTC).replace(tzinfo=None)
    views = view_definitions(views_sql(folder))
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
