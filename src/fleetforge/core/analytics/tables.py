"""Raw analytics columns derived from the event catalog (`domain.names.CATALOG`), never retyped.

Every payload field of a kind becomes a typed column of the kind's raw table (`run_events` for run
kinds, `step_events` for step kinds). `render_raw_migration(shape)` renders the whole ingestion schema
of a catalog shape in one step (migration 0001 is that of the frozen 0001 shape);
`core.analytics.evolution` renders the later migrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from fleetforge.domain.names import CATALOG, SCHEMA_VERSION, KindSpec

__all__ = [
    "ENVELOPE_COLUMNS",
    "HIGH_CARDINALITY",
    "SCOPE_TABLES",
    "KindShape",
    "PayloadColumn",
    "Shape",
    "column_type",
    "kinds_of",
    "parse_view",
    "payload_columns",
    "render_raw_migration",
    "route_view",
    "shape_of",
    "table_columns",
]

SCOPE_TABLES: Final = {"run": "run_events", "step": "step_events"}
HIGH_CARDINALITY: Final = frozenset({"error", "reason"})
"""Free-text string fields stored as plain String instead of LowCardinality(String)."""

ENVELOPE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("event_id", "String"),
    ("kind", "LowCardinality(String)"),
    ("schema_version", "UInt16"),
    ("occurred_at", "DateTime64(6, 'UTC')"),
    ("run_id", "String"),
    ("step_id", "String"),
    ("attempt", "UInt32"),
    ("workspace", "LowCardinality(String)"),
    ("app", "LowCardinality(String)"),
    ("trace_id", "String"),
    ("span_id", "String"),
    ("traceparent", "String"),
)
"""Envelope columns of both raw tables (`step_id` is empty for run events)."""

_TRAILER: Final = (
    ("attributes", "Map(LowCardinality(String), String)"),
    ("payload", "String"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)
_EXTRACT: Final = {"str": "String", "int": "Int64", "float": "Float64", "bool": "Bool", "json": "String"}
_USD_LIMIT: Final = "1e12"


@dataclass(frozen=True, slots=True)
class PayloadColumn:
    """A typed raw column for one payload field (the union over the kinds of a scope)."""

    name: str
    field_type: str  # str | int | float | bool | json (the catalog's)
    ch_type: str  # ClickHouse column type
    kinds: tuple[str, ...]  # kinds that carry the field

    @property
    def extract_type(self) -> str:
        """The type JSONExtract reads the field as (json fields are read as their raw text)."""
        return _EXTRACT[self.field_type]

    @property
    def is_usd(self) -> bool:
        return self.field_type == "float" and self.name.endswith("_usd")


def column_type(name: str, field_type: str) -> str:
    """ClickHouse type of a catalog field: *_usd floats are exact Decimal(18, 6)."""
    if field_type == "str":
        return "String" if name in HIGH_CARDINALITY else "LowCardinality(String)"
    if field_type == "int":
        return "Int64"
    if field_type == "float":
        return "Decimal(18, 6)" if name.endswith("_usd") else "Float64"
    if field_type == "bool":
        return "Bool"
    if field_type == "json":
        return "String"
    raise ValueError(f"field type {field_type!r} of {name!r} is not one of str|int|float|bool|json")


@dataclass(frozen=True, slots=True)
class KindShape:
    """What the analytics schema needs of one catalog kind: its scope and its typed (name, type) fields."""

    kind: str
    scope: str
    fields: tuple[tuple[str, str], ...]


Shape = tuple[KindShape, ...]
"""The catalog as the raw schema sees it; a frozen shape renders the schema of a past release."""


def shape_of(catalog: Iterable[KindSpec] | None = None) -> Shape:
    """The shape of a catalog (default: the current `CATALOG`), column fields only."""
    specs = list(catalog) if catalog is not None else list(CATALOG.values())
    return tuple(KindShape(str(s.kind), s.scope, tuple((f.name, f.type) for f in s.fields if f.column))
                 for s in specs)


def kinds_of(scope: str, shape: Shape | None = None) -> tuple[str, ...]:
    """Event kinds of a scope ("run" or "step"), in catalog order."""
    return tuple(k.kind for k in (shape if shape is not None else shape_of()) if k.scope == scope)


def payload_columns(scope: str, catalog: Iterable[KindSpec] | Shape | None = None) -> tuple[PayloadColumn, ...]:
    """The payload columns of a scope's raw table, in order of first appearance in the catalog."""
    items: list[KindSpec | KindShape] = list(catalog) if catalog is not None else list(CATALOG.values())
    shape = [k if isinstance(k, KindShape) else shape_of([k])[0] for k in items]
    types: dict[str, str] = {}
    kinds: dict[str, list[str]] = {}
    for spec in shape:
        if spec.scope != scope:
            continue
        for name, ftype in spec.fields:
            if name in types and types[name] != ftype:
                raise ValueError(f"payload field {name!r} is {types[name]} in one kind and {ftype} "
                                 f"in {spec.kind}: a raw column needs one type")
            if any(name == c for c, _ in ENVELOPE_COLUMNS + _TRAILER):
                raise ValueError(f"payload field {name!r} of {spec.kind} collides with an envelope column")
            types.setdefault(name, ftype)
            kinds.setdefault(name, []).append(spec.kind)
    return tuple(PayloadColumn(n, t, column_type(n, t), tuple(kinds[n])) for n, t in types.items())


# -- rendering of the ingestion migration ----------------------------------------------------------


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def table_columns(table: str, shape: Shape) -> list[tuple[str, str]]:
    """(name, type) of a raw table (`run_events`, `step_events`, `envelopes_parsed`) as `shape` renders it."""
    if table == "envelopes_parsed":
        return [*ENVELOPE_COLUMNS, *((c.name, c.ch_type) for c in _all_payload(shape)), *_TRAILER[:2],
                ("scope", "LowCardinality(String)"), ("reject_reason", "String"), ("envelope", "String")]
    scope = next(s for s, t in SCOPE_TABLES.items() if t == table)
    cols = [(n, t) for n, t in ENVELOPE_COLUMNS if not (scope == "run" and n == "step_id")]
    cols += [(c.name, c.ch_type) for c in payload_columns(scope, shape)]
    return cols + list(_TRAILER)


def _table(scope: str, shape: Shape) -> str:
    cols = table_columns(SCOPE_TABLES[scope], shape)
    body = ",\n".join(f"    {n} {t}" + (" DEFAULT now64(3)" if n == "ingested_at" else "") for n, t in cols)
    order = ("kind, workspace, app, occurred_at, event_id" if scope == "run"
             else "kind, step_type, occurred_at, event_id")
    return (f"CREATE TABLE IF NOT EXISTS telemetry.{SCOPE_TABLES[scope]}\n(\n{body}\n)\n"
            f"ENGINE = ReplacingMergeTree\nPARTITION BY toDate(occurred_at)\nORDER BY ({order})\n"
            f"SETTINGS index_granularity = 8192;\n")


def _all_payload(shape: Shape) -> list[PayloadColumn]:
    seen: dict[str, PayloadColumn] = {}
    for scope in ("run", "step"):
        for c in payload_columns(scope, shape):
            if c.name in seen and seen[c.name].field_type != c.field_type:
                raise ValueError(f"payload field {c.name!r} has different types in run and step kinds")
            seen.setdefault(c.name, c)
    return list(seen.values())


def _parsed_table(shape: Shape) -> str:
    cols = table_columns("envelopes_parsed", shape)
    body = ",\n".join(f"    {n} {t}" for n, t in cols)
    return f"CREATE TABLE IF NOT EXISTS telemetry.envelopes_parsed\n(\n{body}\n)\nENGINE = Null;\n"


def parse_view(shape: Shape) -> str:
    """The CREATE statement of the parse view (envelopes_in -> envelopes_parsed) as `shape` renders it."""
    payload = ", ".join(f"{c.name} {c.extract_type}" for c in _all_payload(shape))
    envelope_type = ("Tuple(id String, kind String, schema_version Int64, occurred_at String, run_id String, "
                     "step_id String, attempt Int64, workspace String, app String, "
                     "trace Tuple(trace_id String, span_id String, traceparent String))")
    typed = {c.name for c in _all_payload(shape)}
    lines = [
        "event_id",
        "e.kind AS kind",
        "toUInt16(least(greatest(e.schema_version, 0), 65535)) AS schema_version",
        "ifNull(ts, toDateTime64(0, 6, 'UTC')) AS occurred_at",
        "e.run_id AS run_id",
        "e.step_id AS step_id",
        "toUInt32(least(greatest(e.attempt, 0), 4294967295)) AS attempt",
        "e.workspace AS workspace",
        "e.app AS app",
        "e.trace.trace_id AS trace_id",
        "e.trace.span_id AS span_id",
        "e.trace.traceparent AS traceparent",
    ]
    for c in _all_payload(shape):
        if c.is_usd:
            lines.append(f"if(isFinite(p.{c.name}) AND abs(p.{c.name}) < {_USD_LIMIT}, "
                         f"CAST(toDecimal128(toInt64(round(p.{c.name} * 1000000)), 6) / 1000000 "
                         f"AS Decimal(18, 6)), toDecimal64(0, 6)) AS {c.name}")
        elif c.field_type == "float":
            lines.append(f"if(isFinite(p.{c.name}), p.{c.name}, 0) AS {c.name}")
        else:
            lines.append(f"p.{c.name} AS {c.name}")
    lines += [
        "if(hasAll(typed_fields, JSONExtractKeys(payload_raw)), CAST(map() AS Map(LowCardinality(String), String)), "
        "CAST(arrayFilter(kv -> NOT has(typed_fields, kv.1), "
        "arrayMap(kv -> (kv.1, if(startsWith(kv.2, '\"'), JSONExtractString(concat('[', kv.2, ']'), 1), kv.2)), "
        "JSONExtractKeysAndValuesRaw(payload_raw))) AS Map(LowCardinality(String), String))) AS attributes",
        "payload_raw AS payload",
        "multiIf(e.kind IN (" + _sql_list(kinds_of("run", shape)) + "), 'run', e.kind IN ("
        + _sql_list(kinds_of("step", shape)) + "), 'step', '') AS scope",
        "multiIf(e.id = '', if(isValidJSON(envelope), 'missing id', 'invalid JSON or invalid UTF-8'), "
        "e.id != event_id, 'envelope id differs from the delivered event id', "
        f"e.schema_version != {SCHEMA_VERSION}, 'unsupported schema_version', "
        "scope = '', 'unknown kind', "
        "isNull(ts), 'occurred_at is not an RFC 3339 timestamp', "
        "ts < toDateTime64('2000-01-01 00:00:00', 6, 'UTC') OR ts > now64(6, 'UTC') + INTERVAL 1 DAY, "
        "'occurred_at is before 2000 or more than a day ahead', "
        "e.run_id = '', 'missing run_id', "
        "scope = 'step' AND e.step_id = '', 'missing step_id', '') AS reject_reason",
        "envelope",
    ]
    select = ",\n    ".join(lines)
    return (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.envelopes_parse_mv TO telemetry.envelopes_parsed AS\n"
        "WITH\n"
        f"    JSONExtract(envelope, '{envelope_type}') AS e,\n"
        "    JSONExtractRaw(envelope, 'payload') AS payload_raw,\n"
        f"    JSONExtract(payload_raw, 'Tuple({payload})') AS p,\n"
        "    parseDateTime64BestEffortOrNull(e.occurred_at, 6, 'UTC') AS ts,\n"
        f"    [{_sql_list(sorted(typed))}] AS typed_fields\n"
        f"SELECT\n    {select}\nFROM telemetry.envelopes_in;\n"
    )


def route_view(scope: str, shape: Shape) -> str:
    """The CREATE statement of a scope's routing view (envelopes_parsed -> its raw table)."""
    table = SCOPE_TABLES[scope]
    cols = [n for n, _ in ENVELOPE_COLUMNS if not (scope == "run" and n == "step_id")]
    cols += [c.name for c in payload_columns(scope, shape)] + ["attributes", "payload"]
    return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.{table}_mv TO telemetry.{table} AS\n"
            f"SELECT {', '.join(cols)}\nFROM telemetry.envelopes_parsed\n"
            f"WHERE reject_reason = '' AND scope = '{scope}';\n")


_HEADER = """\
-- FleetForge analytics, migration 0001: the raw event tables and the ingestion pipeline.
-- Rendered from the event catalog by fleetforge.core.analytics.tables.render_raw_migration.
--
-- Writers insert (event_id, envelope JSON) rows into telemetry.envelopes_in (engine Null). The
-- parse view extracts typed columns once per envelope; valid events land in telemetry.run_events or
-- telemetry.step_events, the others in telemetry.rejected_events with the reason. Every stored id is
-- recorded in telemetry.event_ids by the same insert; writers consult it to de-duplicate before inserting.

CREATE DATABASE IF NOT EXISTS telemetry;

CREATE TABLE IF NOT EXISTS telemetry.envelopes_in
(
    event_id String,
    envelope String
)
ENGINE = Null;

"""

_TAIL = """\
CREATE TABLE IF NOT EXISTS telemetry.rejected_events
(
    event_id String,
    reason LowCardinality(String),
    envelope String,
    received_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at, event_id);

CREATE TABLE IF NOT EXISTS telemetry.event_ids
(
    event_id String,
    target LowCardinality(String),
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.rejected_events_mv TO telemetry.rejected_events AS
SELECT event_id, reject_reason AS reason, envelope
FROM telemetry.envelopes_parsed
WHERE reject_reason != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.event_ids_mv TO telemetry.event_ids AS
SELECT event_id, multiIf(reject_reason != '', 'rejected_events', scope = 'run', 'run_events', 'step_events') AS target,
       now64(3) AS ingested_at
FROM telemetry.envelopes_parsed;
"""


def render_raw_migration(shape: Shape | None = None) -> str:
    """The text of migration 0001 (raw tables, parse and routing views, rejects, event ids) for `shape`
    (default: the current catalog, i.e. what a fresh database would get in one step)."""
    sh = shape if shape is not None else shape_of()
    parts = [_HEADER, _table("run", sh), "\n", _table("step", sh), "\n", _parsed_table(sh), "\n", _TAIL, "\n",
             parse_view(sh), "\n", route_view("run", sh), "\n", route_view("step", sh)]
    return "".join(parts)
