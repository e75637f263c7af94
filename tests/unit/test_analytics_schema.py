"""The ClickHouse SQL files against the event catalog, and their statement splitting (no services)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetforge.adapters.readers.clickhouse.chdb_backend import clean_text, param_text
from fleetforge.adapters.readers.clickhouse.schema import migrations, view_definitions, views_sql
from fleetforge.adapters.stores.sqlfiles import split_statements
from fleetforge.core.analytics.evolution import SHAPE_0001, frozen, render_migrations, render_upgrade
from fleetforge.core.analytics.tables import (
    SCOPE_TABLES,
    column_type,
    kinds_of,
    payload_columns,
    render_raw_migration,
)
from fleetforge.domain.names import CATALOG, EventKind, Field, KindSpec

FROZEN_0001_CHECKSUM = "9189da4bc86ae6b9"
"""Checksum of 0001_raw_events.sql as released in 31d926e: databases set up then have it recorded."""
GUIDE_TABLES = {"telemetry.run_latency_metrics", "telemetry.step_retry_heatmap", "telemetry.budget_burndown",
                "telemetry.policy_decision_rates", "telemetry.tool_error_taxonomy", "telemetry.agent_activity"}


def _columns(sql: str, table: str) -> dict[str, str]:
    m = re.search(rf"CREATE TABLE IF NOT EXISTS telemetry\.{table}\s*\((.*?)\n\)", sql, re.S)
    assert m, table
    cols = {}
    for line in m.group(1).strip().splitlines():
        name, _, rest = line.strip().rstrip(",").partition(" ")
        cols[name] = rest.split(" DEFAULT ")[0]
    added = rf"ALTER TABLE telemetry\.{table} ADD COLUMN IF NOT EXISTS (\w+) ([^,;]+?)(?: AFTER \w+)?;"
    for add in re.finditer(added, sql):
        cols[add.group(1)] = add.group(2).strip()
    return cols


def test_every_catalog_field_has_a_typed_raw_column() -> None:
    """Every field is a typed column, except those the catalog keeps in the raw `payload` only."""
    sql = "\n".join(m.sql for m in migrations())
    for scope, table in SCOPE_TABLES.items():
        cols = _columns(sql, table)
        for spec in CATALOG.values():
            if spec.scope == scope:
                for f in spec.fields:
                    want = column_type(f.name, f.type) if f.column else None
                    assert cols.get(f.name) == want, f"{table}.{f.name}"
        for kind in kinds_of(scope):
            assert f"'{kind}'" in sql, kind


def test_the_committed_migrations_are_their_renderings() -> None:
    """0001 is frozen at its release; every later migration is rendered from two catalog shapes."""
    committed = [(f"{m.version:04d}_{m.name}.sql", m.sql) for m in migrations()]
    rendered = render_migrations()
    assert [n for n, _ in committed] == [n for n, _ in rendered], (
        "`python -m fleetforge.core.analytics.evolution > "
        f"src/fleetforge/adapters/readers/clickhouse/migrations/{rendered[-1][0]}` renders the missing migration")
    for (name, sql), (_, want) in zip(committed, rendered, strict=True):
        assert sql == want, (
            f"migrations/{name} differs from its rendering: if it was never released, re-render it with "
            "`python -m fleetforge.core.analytics.evolution`; if it was, append its shape to RELEASED in "
            "core/analytics/evolution.py so the change renders as a new migration")


def test_the_first_migration_is_frozen_at_release_31d926e() -> None:
    assert migrations()[0].checksum == FROZEN_0001_CHECKSUM
    assert render_raw_migration(SHAPE_0001) == migrations()[0].sql


def test_an_upgrade_adds_only_new_columns_and_refuses_retyping() -> None:
    old = frozen((("step_failed", "step", "error:str tokens:int"),))
    new = frozen((("step_failed", "step", "error:str wait_ms:float tokens:int"),))
    sql = render_upgrade(7, old, new)
    assert "ALTER TABLE telemetry.step_events ADD COLUMN IF NOT EXISTS wait_ms Float64 AFTER error;" in sql
    assert "telemetry.run_events ADD" not in sql and "DROP VIEW IF EXISTS telemetry.run_events_mv" not in sql
    assert sql.index("DROP VIEW IF EXISTS telemetry.step_events_mv") < sql.index(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.step_events_mv")
    assert split_statements(render_upgrade(8, new, new)) == []
    with pytest.raises(ValueError, match=r"tokens of telemetry\.step_events is Int64 in the old shape and Float64"):
        render_upgrade(9, old, frozen((("step_failed", "step", "error:str tokens:float"),)))


def test_column_types() -> None:
    assert column_type("cost_usd", "float") == "Decimal(18, 6)"
    assert column_type("duration_ms", "float") == "Float64"
    assert column_type("error", "str") == "String"
    assert column_type("tool", "str") == "LowCardinality(String)"
    assert column_type("raw", "json") == "String"
    with pytest.raises(ValueError, match="not one of"):
        column_type("x", "decimal")


def test_conflicting_field_types_are_refused() -> None:
    specs = [KindSpec(EventKind.STEP_FAILED, "step", "", (Field("tokens", "int", ""),)),
             KindSpec(EventKind.STEP_SUCCEEDED, "step", "", (Field("tokens", "float", ""),))]
    with pytest.raises(ValueError, match="one type"):
        payload_columns("step", specs)


def test_the_views_file_provisions_the_guide_tables_and_agent_activity() -> None:
    views = view_definitions(views_sql())
    assert {v.target for v in views} == GUIDE_TABLES
    assert {v.source for v in views} <= {"telemetry.run_events", "telemetry.step_events"}
    text = views_sql()
    for table in GUIDE_TABLES:
        assert f"CREATE TABLE IF NOT EXISTS {table}" in text
    for statement in split_statements(text):
        assert statement.split()[0] == "CREATE" and "IF NOT EXISTS" in statement


def test_state_columns_end_in_state_and_counts_are_simple_aggregates() -> None:
    for line in views_sql().splitlines():
        m = re.match(r"\s+(\w+) (AggregateFunction|SimpleAggregateFunction)\(", line)
        if m:
            assert m.group(1).endswith("_state") == (m.group(2) == "AggregateFunction"), line


def test_split_statements_ignores_semicolons_in_quotes_and_comments() -> None:
    sql = ("-- a comment; with a semicolon\nSELECT 'a;b', \"c;d\" /* x; y */ FROM t;\n"
           "SELECT 'it\\'s; fine';  -- trailing; comment\n\n;SELECT 3")
    assert split_statements(sql) == ["SELECT 'a;b', \"c;d\"  FROM t", "SELECT 'it\\'s; fine'", "SELECT 3"]


def test_deploy_clickhouse_holds_the_packaged_sql_unchanged() -> None:
    """deploy/clickhouse/ is what the guide names: links to the packaged files, one copy of each."""
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse"
    package = Path(__file__).resolve().parents[2] / "src" / "fleetforge" / "adapters" / "readers" / "clickhouse"
    files = [Path("materialized_views.sql")] + [p.relative_to(deploy) for p in (deploy / "migrations").glob("*.sql")]
    packaged = {p.relative_to(package) for p in [package / "materialized_views.sql", *package.glob("migrations/*.sql")]}
    assert set(files) == packaged
    for rel in files:
        assert (deploy / rel).resolve() == (package / rel).resolve(), (
            f"deploy/clickhouse/{rel} must be a link to src/fleetforge/adapters/readers/clickhouse/{rel}: "
            f"`ln -sf {'../' * len(rel.parts)}../src/fleetforge/adapters/readers/clickhouse/{rel} "
            f"deploy/clickhouse/{rel}`")


@pytest.mark.parametrize("value,text", [
    ("it's", "it's"), ("a\\b\tc\n", "a\\\\b\\tc\\n"), (5, "5"), (True, "true"),
    (["a'b", "c\\d"], "['a\\'b','c\\\\d']"), ([], "[]"),
])
def test_param_text(value: object, text: str) -> None:
    assert param_text(value) == text


def test_clean_text_makes_valid_utf8() -> None:
    assert clean_text(b"a\xffb") == "a\ufffdb"
    assert clean_text("ok \u00e9") == "ok \u00e9"
    assert clean_text("x\udc80").encode("utf-8")


def test_server_urls_are_checked_and_redacted() -> None:
    from fleetforge.adapters.readers.clickhouse.server_backend import ClickHouseServerAnalytics
    from fleetforge.domain.errors import ConfigError
    from fleetforge.domain.secrets import redact_url

    assert redact_url("https://u:secret@ch.example:8443/db") == "https://u:***@ch.example:8443/db"
    assert redact_url("http://ch:8123") == "http://ch:8123"
    with pytest.raises(ConfigError, match="expected http") as info:
        ClickHouseServerAnalytics("ftp://u:secret@host")
    assert "secret" not in str(info.value)


def test_a_shape_literal_reads_back_as_the_same_shape() -> None:
    from fleetforge.core.analytics.evolution import shape_literal
    from fleetforge.core.analytics.tables import shape_of

    assert eval(shape_literal(shape_of()), {"frozen": frozen}) == shape_of()
    assert eval(shape_literal(SHAPE_0001), {"frozen": frozen}) == SHAPE_0001
