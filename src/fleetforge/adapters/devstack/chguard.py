"""What the read-only ClickHouse endpoint lets through, decided on ClickHouse's own parse of a query.

`classify` reads the output of `EXPLAIN AST <query>` (the engine's parser, so comments, case, quoting and
query parameters are already resolved) and allows only reads:

- statements: SELECT / UNION / INTERSECT / EXCEPT, the SHOW and DESCRIBE / EXISTS kinds in `READ_ROOTS`,
  and EXPLAIN AST / SYNTAX / PLAN / PIPELINE / ESTIMATE / QUERY TREE of those;
- tables: the `telemetry`, `default` and `information_schema` databases, and the `system` tables in
  `SYSTEM_TABLES`; table functions only from `TABLE_FUNCTIONS`;
- no `INTO OUTFILE`, no SETTINGS clause (settings come from the URL, see `check_settings`), no function that
  reads files or other tables by name (`IO_FUNCTIONS`).

The dump is checked for integrity first (one root, every `(children N)` count exact), so an identifier
holding a newline cannot forge nodes. `check_settings` is the allow-list of settings a client may pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "IO_FUNCTIONS",
    "READ_ROOTS",
    "SYSTEM_TABLES",
    "TABLE_FUNCTIONS",
    "Limits",
    "Refused",
    "check_settings",
    "classify",
    "resolve_database",
]

READ_ROOTS: Final = frozenset(
    {
        "SelectWithUnionQuery",
        "DescribeQuery",
        "ExistsTableQuery",
        "ExistsDatabaseQuery",
        "ShowTables",  # SHOW TABLES / DATABASES / DICTIONARIES / CLUSTERS / SETTINGS
        "ShowColumns",
        "ShowIndexes",
        "ShowCreateTableQuery",
        "ShowCreateViewQuery",
        "ShowCreateDatabaseQuery",
        "ShowProcesslistQuery",
        "ShowFunctions",
        "ShowSetting",
        "ShowEngineQuery",
    }
)
EXPLAIN_KINDS: Final = frozenset(
    {"EXPLAIN", "EXPLAIN AST", "EXPLAIN SYNTAX", "EXPLAIN PLAN", "EXPLAIN PIPELINE", "EXPLAIN ESTIMATE",
     "EXPLAIN QUERY TREE"}
)
TABLE_FUNCTIONS: Final = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateseries", "view", "null"}
)
# Scalar functions that read a file, a model or a table named by a string (outside the table checks).
IO_FUNCTIONS: Final = frozenset(
    {"file", "catboostevaluate", "modelevaluate", "joinget", "joingetornull", "dictget", "dictgetordefault",
     "dictgetornull", "dicthas", "dictgethierarchy", "dictisin", "dictgetchildren", "dictgetdescendants",
     "dictgetall"}
)
SYSTEM_TABLES: Final = frozenset(
    {
        "one", "numbers", "numbers_mt", "zeros", "zeros_mt",
        "settings", "functions", "table_functions", "formats", "data_type_families", "time_zones",
        "build_options", "collations", "aggregate_function_combinators", "keywords",
        "databases", "tables", "columns", "parts", "parts_columns", "data_skipping_indices", "projections",
        "merge_tree_settings", "table_engines", "database_engines", "processes", "clusters",
    }
)
ALLOWED_DATABASES: Final = frozenset({"telemetry", "default", "system", "information_schema", "INFORMATION_SCHEMA"})
_STATEMENTS: Final = READ_ROOTS | {"Explain"}
_LINE = re.compile(r"^( *)(\S.*)$")
_CHILDREN = re.compile(r" \(children (\d+)\)$")
_MEMBERSHIP: Final = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
                                "globalnotnullin"})


class Refused(Exception):
    """The query is not one the endpoint runs; `code`/`name` are ClickHouse's error code and name."""

    def __init__(self, message: str, code: int = 164, name: str = "READONLY", status: int = 403) -> None:
        super().__init__(f"{message} ({name})")
        self.code = code
        self.status = status


def _access(message: str) -> Refused:
    return Refused(message, 497, "ACCESS_DENIED", 403)


@dataclass(slots=True)
class _Node:
    kind: str  # the node's first word(s), e.g. "Function", "SelectWithUnionQuery", "Explain"
    text: str  # the rest of its line, without the children count
    depth: int
    declared: int = 0  # the `(children N)` the dump states
    children: list[_Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The first word after the kind (a function's or table's name)."""
        return self.text.split(" ", 1)[0] if self.text else ""


def _parse(dump: str) -> _Node:
    """The tree of an `EXPLAIN AST` dump; Refused when its shape is not exactly what the engine writes."""
    lines = [line for line in dump.split("\n") if line.strip()]
    stack: list[_Node] = []
    roots: list[_Node] = []
    base = None
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            raise Refused("the query's syntax tree could not be read", 62, "SYNTAX_ERROR", 400)
        indent, rest = len(m.group(1)), m.group(2)
        base = indent if base is None else base
        depth = indent - base
        declared = 0
        if c := _CHILDREN.search(rest):
            declared, rest = int(c.group(1)), rest[: c.start()]
        kind, _, text = rest.partition(" ")
        node = _Node(kind, text.strip(), depth, declared)
        while stack and stack[-1].depth >= depth:
            stack.pop()
        if stack:
            parent = stack[-1]
            if depth != parent.depth + 1:
                raise Refused("the query's syntax tree is malformed", 62, "SYNTAX_ERROR", 400)
            parent.children.append(node)
        elif depth == 0:
            roots.append(node)
        else:
            raise Refused("the query's syntax tree is malformed", 62, "SYNTAX_ERROR", 400)
        stack.append(node)
    if len(roots) != 1:
        raise Refused(
            "the query's syntax tree has several roots (multi-statements, or a name holding a line break) and is "
            "not allowed", 62, "SYNTAX_ERROR", 400,
        )
    _check_counts(roots[0])
    return roots[0]


def _check_counts(node: _Node) -> None:
    if node.declared != len(node.children):
        raise Refused(
            "the query's syntax tree has unexpected nodes (a name holding a line break?)", 62, "SYNTAX_ERROR", 400
        )
    for child in node.children:
        _check_counts(child)


def resolve_database(qualified: str, current: str) -> tuple[str, str]:
    """(database, table) of a table name as the dump prints it (`db.table` or `table`)."""
    db, dot, table = qualified.partition(".")
    return (db, table) if dot else (current, db)


def _check_table(qualified: str, current: str) -> None:
    db, table = resolve_database(qualified, current)
    if db not in ALLOWED_DATABASES:
        raise _access(f"database {db!r} is not readable here: query telemetry (or system, information_schema)")
    if db == "system" and table not in SYSTEM_TABLES:
        raise _access(f"system.{table} is not readable here; allowed system tables: {', '.join(sorted(SYSTEM_TABLES))}")


def _walk(node: _Node, parent: _Node | None, current: str) -> None:
    kind = node.kind
    if kind == "Set":
        raise Refused(
            "a SETTINGS clause is not allowed: pass settings as URL parameters (only the allowed ones)",
            164,
        )
    if kind == "Function":
        name = node.name.lower()
        if parent is not None and parent.kind == "TableExpression":
            if name not in TABLE_FUNCTIONS:
                raise _access(
                    f"table function {node.name}() is not allowed; allowed: {', '.join(sorted(TABLE_FUNCTIONS))}"
                )
        elif name in IO_FUNCTIONS or name.startswith("dictget"):
            raise _access(f"function {node.name}() reads outside the telemetry tables and is not allowed")
        if name in _MEMBERSHIP and node.children and len(node.children[0].children) == 2:
            rhs = node.children[0].children[1]
            if rhs.kind == "Identifier":  # `x IN db.table` reads that table
                _check_table(rhs.name, current)
    elif kind == "TableIdentifier":
        _check_table(node.text.split(" (alias", 1)[0], current)
    for child in node.children:
        _walk(child, node, current)


def _check_statement(node: _Node, current: str) -> None:
    if node.kind == "Explain":
        explain = node.text
        if explain not in EXPLAIN_KINDS:
            raise Refused(f"{explain} is not allowed (only AST, SYNTAX, PLAN, PIPELINE, ESTIMATE, QUERY TREE)")
        rest = node.children[1:] if node.children and node.children[0].kind == "Set" else node.children
        if not rest or rest[0].kind not in _STATEMENTS:
            raise Refused(f"{explain} of this statement is not allowed")
        for extra in rest[1:]:
            _check_output_option(extra)
        _check_statement(rest[0], current)
        return
    if node.kind not in READ_ROOTS:
        if node.kind == "Set":
            raise Refused("SET is not allowed: pass the allowed settings as URL parameters")
        what = node.kind if " " in node.kind or node.kind.endswith("Query") else f"{node.kind} {node.text}".strip()
        raise Refused(f"{what.split('(')[0].strip()} is not a read: the endpoint is read-only (start it with "
                      "--allow-writes to write)")
    for child in node.children:
        if child.kind == "Literal":
            _check_output_option(child)
        _walk(child, node, current)


def _check_output_option(node: _Node) -> None:
    """A statement's trailing child: FORMAT (an Identifier) passes; INTO OUTFILE (a Literal) never does."""
    if node.kind == "Literal":
        raise Refused("INTO OUTFILE is not allowed: the endpoint never writes files")
    if node.kind == "Set":
        _walk(node, None, "")
    if node.kind != "Identifier":
        raise Refused(f"{node.kind} after the statement is not allowed", 62, "SYNTAX_ERROR", 400)


def classify(dump: str, database: str) -> None:
    """Refused unless the `EXPLAIN AST` dump is of one read the endpoint allows, run in `database`."""
    root = _parse(dump)
    _check_statement(root, database)


# -- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """The endpoint's own limits; a client may lower them, never raise them (asking more gets these)."""

    max_execution_time: int = 30
    max_result_bytes: int = 256 * 1024 * 1024
    max_result_rows: int = 0  # 0: no row limit (bytes still bound the result)
    max_memory_usage: int = 4 * 1024 * 1024 * 1024

    def settings(self) -> dict[str, str]:
        return {
            "max_execution_time": str(self.max_execution_time),
            "max_result_bytes": str(self.max_result_bytes),
            "max_result_rows": str(self.max_result_rows),
            "max_memory_usage": str(self.max_memory_usage),
            "result_overflow_mode": "throw",
        }


# Numeric settings a client may only lower (0 means "no limit" in ClickHouse, so it counts as raising).
LOWER_ONLY: Final = frozenset(
    {"max_execution_time", "max_result_bytes", "max_result_rows", "max_memory_usage", "max_rows_to_read",
     "max_bytes_to_read", "max_rows_to_group_by", "max_rows_to_sort", "max_bytes_to_sort", "max_threads",
     "max_block_size", "limit", "offset", "max_rows_in_join", "max_bytes_in_join", "max_columns_to_read",
     "max_rows_to_transfer", "max_bytes_to_transfer", "max_rows_in_distinct", "max_bytes_in_distinct"}
)
FREE: Final = frozenset(
    {"extremes", "join_use_nulls", "session_timezone", "date_time_output_format", "interval_output_format",
     "totals_mode", "totals_auto_threshold", "transform_null_in", "aggregate_functions_null_for_empty",
     "prefer_column_name_to_alias", "union_default_mode", "result_overflow_mode", "read_overflow_mode",
     "group_by_overflow_mode", "sort_overflow_mode", "join_overflow_mode", "timeout_overflow_mode",
     "use_query_cache", "enable_positional_arguments", "joined_subquery_requires_alias", "max_query_size"}
)
_OVERFLOW_MODES: Final = frozenset({"throw", "break"})
# format settings naming a file (read or written), a schema source, a URL to reach, or revealing secrets
FILE_SETTINGS: Final = frozenset(
    {"format_schema", "format_schema_source", "format_schema_message_name", "format_template_row",
     "format_template_resultset", "output_format_schema", "format_display_secrets_in_show_and_select",
     "format_avro_schema_registry_url", "output_format_avro_confluent_subject"}
)
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,127}$")
_VALUE = re.compile(r"^[^\x00-\x1f\x7f]{0,1024}$")


def _allowed_name(name: str) -> bool:
    if name in FILE_SETTINGS:
        return False
    return name in LOWER_ONLY or name in FREE or name.startswith(("output_format_", "format_"))


def check_settings(requested: Mapping[str, str], limits: Limits) -> dict[str, str]:
    """The settings to apply: the endpoint's limits, lowered where the client asked. Refused for a setting
    not on the allow-list, a limit raised, or a value with control characters."""
    out = limits.settings()
    for name, value in requested.items():
        if not _SETTING_NAME.match(name) or not _allowed_name(name):
            raise Refused(
                f"setting {name[:80]!r} is not allowed on this endpoint (allowed: limits such as "
                "max_execution_time or max_result_rows, lowered only; output_format_*/format_* settings "
                "that name no file; a few query semantics settings)"
            )
        if name == "use_query_cache" and value not in ("0", "false"):
            raise Refused("setting 'use_query_cache' may only be 0 here")
        if name.endswith("_overflow_mode") and value not in _OVERFLOW_MODES:
            raise Refused(f"setting {name!r} must be throw or break", 471, "INVALID_SETTING_VALUE", 400)
        if not _VALUE.match(value):
            raise Refused(f"setting {name!r} has a control character or is too long", 471, "INVALID_SETTING_VALUE",
                          400)
        if name in LOWER_ONLY:
            out[name] = _lowered(name, value, out.get(name))
        else:
            out[name] = value
    return out


def _lowered(name: str, value: str, ceiling: str | None) -> str:
    """`value`, capped at the endpoint's `ceiling` (0 means "no limit" in ClickHouse, so it gets the ceiling):
    a client asking for more (Grafana sends its own query timeout as max_execution_time) gets the limit."""
    try:
        number = float(value)
    except ValueError:
        raise Refused(f"setting {name!r} must be a number", 471, "INVALID_SETTING_VALUE", 400) from None
    if number < 0:
        raise Refused(f"setting {name!r} must not be negative", 471, "INVALID_SETTING_VALUE", 400)
    if ceiling is None or float(ceiling) == 0:
        return value
    return ceiling if number == 0 or number > float(ceiling) else value
