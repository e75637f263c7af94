"""The ClickHouse ingestion migrations, each rendered from two catalog shapes (never hand-written).

Migration 0001 creates the raw schema of the frozen shape `SHAPE_0001` (release 31d926e). Each later
migration N brings shape N-1 to shape N: `ADD COLUMN IF NOT EXISTS` for every new typed column of the raw
tables and of the parse table, then the parse and routing views dropped and re-created when their
text changes. Every statement is safe to re-run (ClickHouse has no transactions). The last migration
ends at the current catalog; once it is released, append its shape to `RELEASED` and the next field
added renders one more migration.
"""

from __future__ import annotations

import sys
from typing import Final

from fleetforge.core.analytics.tables import (
    SCOPE_TABLES,
    KindShape,
    Shape,
    parse_view,
    render_raw_migration,
    route_view,
    shape_of,
    table_columns,
)

__all__ = ["RELEASED", "SHAPE_0001", "RenderedMigration", "frozen", "render_migrations", "render_upgrade",
           "shape_literal"]

RenderedMigration = tuple[str, str]  # (file name, SQL text)


def frozen(kinds: tuple[tuple[str, str, str], ...]) -> Shape:
    """A shape from (kind, scope, "field:type field:type ...") triples."""
    return tuple(KindShape(k, s, tuple((f.split(":")[0], f.split(":")[1]) for f in fields.split()))
                 for k, s, fields in kinds)


SHAPE_0001: Final = frozen((
    ("run_submitted", "run", "status:str slo_tier:str steps:int budget_tokens:int budget_cost_usd:float labels:json"),
    ("run_started", "run", "status:str slo_tier:str queue_lag_ms:float"),
    ("run_succeeded", "run", "status:str slo_tier:str duration_ms:float queue_target_ms:int"),
    ("run_failed", "run", "status:str slo_tier:str duration_ms:float queue_target_ms:int error_kind:str"),
    ("run_canceled", "run", "status:str slo_tier:str duration_ms:float queue_target_ms:int"),
    ("step_queued", "step", "step_type:str slo_tier:str queue_target_ms:int priority_boost:int"),
    ("step_started", "step", "step_type:str slo_tier:str queue_lag_ms:float worker:str"),
    ("step_succeeded", "step",
     "step_type:str slo_tier:str tokens:int cost_usd:float duration_ms:float tool:str "
     "provider:str model:str input_tokens:int output_tokens:int cached_tokens:int "
     "recovered_after_ms:float"),
    ("step_failed", "step",
     "step_type:str slo_tier:str tokens:int cost_usd:float duration_ms:float "
     "error_kind:str error:str tool:str provider:str final:bool"),
    ("step_retry_scheduled", "step", "step_type:str slo_tier:str next_attempt:int backoff_ms:float error_kind:str"),
    ("step_deferred", "step", "step_type:str slo_tier:str reason:str delay_ms:float"),
    ("step_denied", "step", "step_type:str slo_tier:str error_kind:str reason:str pack:str"),
    ("step_skipped", "step", "step_type:str slo_tier:str reason:str"),
    ("policy_decision", "step", "step_type:str slo_tier:str pack:str hook:str effect:str reason:str raw:json"),
    ("budget_reserved", "step",
     "step_type:str slo_tier:str tokens:int cost_usd:float source:str tokens_limit:int "
     "cost_limit_usd:float tokens_remaining:int cost_remaining_usd:float "
     "tokens_projected_burn:int cost_projected_burn_usd:float budget_active:bool"),
    ("budget_reconciled", "step",
     "step_type:str slo_tier:str tokens_reserved:int tokens_used:int "
     "cost_reserved_usd:float cost_used_usd:float tokens_limit:int "
     "tokens_remaining:int cost_remaining_usd:float cost_limit_usd:float "
     "budget_active:bool"),
    ("tool_call", "step", "step_type:str slo_tier:str tool:str provider:str ok:bool error_kind:str latency_ms:float"),
))
"""The catalog's typed fields at release 31d926e: what migration 0001 creates."""

RELEASED: Final[tuple[Shape, ...]] = (SHAPE_0001,)
"""The shape each released migration ends at, in migration order; never edit an entry, append one."""

_TABLES: Final = (*SCOPE_TABLES.values(), "envelopes_parsed")


def render_upgrade(version: int, old: Shape, new: Shape) -> str:
    """Migration `version`: the statements that bring a database at shape `old` to shape `new`.

    Raises ValueError when a column would be removed or retyped (that needs a hand-made data migration)."""
    lines = [f"-- FleetForge analytics, migration {version:04d}: typed columns and views of the current event catalog.",
             "-- Rendered by fleetforge.core.analytics.evolution.render_upgrade; every statement is safe to re-run.",
             "-- Stop the sink while it runs: envelopes inserted between a view's DROP and CREATE are not parsed.",
             ""]
    for table in _TABLES:
        before = dict(table_columns(table, old))
        after = table_columns(table, new)
        for name, ch_type in before.items():
            if dict(after).get(name) != ch_type:
                raise ValueError(f"column {name} of telemetry.{table} is {ch_type} in the old shape and "
                                 f"{dict(after).get(name, 'absent')} in the new one: only added columns are "
                                 "rendered; write that change as its own migration")
        for i, (name, ch_type) in enumerate(after):
            if name not in before:
                lines.append(f"ALTER TABLE telemetry.{table} ADD COLUMN IF NOT EXISTS {name} {ch_type} "
                             f"AFTER {after[i - 1][0]};")
    views = [("telemetry.envelopes_parse_mv", parse_view(old), parse_view(new))]
    views += [(f"telemetry.{SCOPE_TABLES[s]}_mv", route_view(s, old), route_view(s, new)) for s in SCOPE_TABLES]
    for name, old_sql, new_sql in views:
        if old_sql != new_sql:
            lines += ["", f"DROP VIEW IF EXISTS {name};", "", new_sql.rstrip("\n")]
    return "\n".join(lines) + "\n"


def render_migrations() -> list[RenderedMigration]:
    """Every migration as it must be committed: 0001 from `SHAPE_0001`, then one per released shape and
    one more for the current catalog when it differs from the last released shape."""
    current = shape_of()
    shapes = [*RELEASED, *([current] if current != RELEASED[-1] else [])]
    out = [("0001_raw_events.sql", render_raw_migration(shapes[0]))]
    for version in range(2, len(shapes) + 1):
        out.append((f"{version:04d}_catalog_upgrade.sql", render_upgrade(version, shapes[version - 2],
                                                                         shapes[version - 1])))
    return out


def shape_literal(shape: Shape) -> str:
    """Python source of `frozen((...))` for a shape, to append to `RELEASED` when a migration is released."""
    rows = "".join(f'    ("{k.kind}", "{k.scope}", "{" ".join(f"{n}:{t}" for n, t in k.fields)}"),\n' for k in shape)
    return f"frozen((\n{rows}))\n"


if __name__ == "__main__":  # pragma: no cover - maintenance: print migration N (default: the last) or --shape
    if sys.argv[1:] == ["--shape"]:
        sys.stdout.write(shape_literal(shape_of()))
        raise SystemExit(0)
    rendered = render_migrations()
    name, text = rendered[int(sys.argv[1]) - 1] if len(sys.argv) > 1 else rendered[-1]
    sys.stderr.write(f"{name}\n")
    sys.stdout.write(text)
