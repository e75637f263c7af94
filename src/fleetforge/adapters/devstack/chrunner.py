"""Runs the ClickHouse endpoint's queries on the stack's chDB engine, read-only by construction.

Each query gets a fresh chDB session on the shared engine, prepared in this order:

1. `USE <database>` (an allowed database);
2. `SET` the endpoint's limits, lowered where the client asked, and the client's allowed settings
   (`chguard.check_settings`), and a `log_comment` tagging the query for `cancel`;
3. `SET readonly = 1`: from here on the engine refuses every setting change, so nothing in the query
   (a SETTINGS clause, a `SET`) can raise a limit;
4. `formatQuery` of the text refuses multi-statements (ClickHouse's parser), then `EXPLAIN AST` of it is
   judged by `chguard.classify`; only then does the query itself run.

With `allow_writes` steps 3-4 are skipped and any setting is passed: the operator asked for full access.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any, Final

from fleetforge.adapters.devstack.chguard import ALLOWED_DATABASES, Limits, Refused, check_settings, classify

__all__ = ["QueryError", "QueryRunner", "error_from"]

log = logging.getLogger("fleetforge.observability.clickhouse")

_CODE = re.compile(r"Code: (\d+)\.")
_NAME = re.compile(r"\(([A-Z_]{3,})\)")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_STATUS: Final[dict[int, int]] = {
    62: 400, 47: 400, 46: 400, 36: 400, 26: 400, 27: 400, 38: 400, 41: 400, 43: 400, 48: 400, 53: 400,
    115: 400, 456: 400, 457: 400, 471: 400, 60: 404, 81: 404, 164: 403, 192: 403, 193: 403, 194: 403,
    497: 403, 516: 401, 159: 408, 202: 503, 394: 499, 396: 413, 241: 507,
}


class QueryError(Exception):
    """A query failed; `code` is ClickHouse's error code (0 when unknown), `status` the HTTP status."""

    def __init__(self, message: str, code: int = 0, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or _STATUS.get(code, 500)


def error_from(exc: BaseException) -> QueryError:
    """A QueryError with the innermost message of a chDB exception."""
    if isinstance(exc, Refused):
        return QueryError(str(exc), exc.code, exc.status)
    text = str(exc).strip()
    codes = _CODE.findall(text)
    code = int(codes[-1]) if codes else 0
    # chDB nests "Code: N. DB::Exception: Code: N. DB::Exception: ..."; keep the innermost message.
    marker = text.rfind("DB::Exception: ")
    message = text[marker + len("DB::Exception: ") :] if marker >= 0 else text
    message = re.sub(r"\s*\(version [^)]*\)\.?\s*$", "", message).strip()
    suffix = "" if _NAME.findall(message) else " (UNKNOWN)"
    return QueryError(f"{message}{suffix}", code)


def _literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _param_escape(value: str) -> str:
    """`value` as a query parameter (ClickHouse reads parameter values TSV-escaped)."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        .replace("\0", "\\0")
    )


class QueryRunner:
    """Runs one query per fresh chDB session on the engine owning `data_dir`."""

    def __init__(self, data_dir: str, *, allow_writes: bool = False, limits: Limits | None = None) -> None:
        self.data_dir = data_dir
        self.allow_writes = allow_writes
        self.limits = limits or Limits()
        self.version = ""  # filled in by `probe`
        self.timezone = "UTC"
        self._kill_lock = threading.Lock()

    def _session(self) -> Any:
        import chdb.session

        return chdb.session.Session(self.data_dir)  # type: ignore[no-untyped-call]

    def probe(self) -> None:
        """Read the engine's version and time zone (also proves the data dir can be queried)."""
        session = self._session()
        try:
            row = session.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().strip()
        finally:
            session.close()
        self.version, self.timezone = row.split("\t")

    def settings_for(self, requested: Mapping[str, str]) -> dict[str, str]:
        """The settings a query runs with; QueryError for one the endpoint refuses."""
        if self.allow_writes:
            return {**self.limits.settings(), **requested}
        try:
            return check_settings(requested, self.limits)
        except Refused as exc:
            raise error_from(exc) from None

    def check_database(self, database: str | None) -> str:
        """The database a query runs in (`default` when none is given); QueryError for others."""
        name = database or "default"
        if not _DB_NAME.match(name):
            raise QueryError("Database name is not valid (UNKNOWN_DATABASE)", 81, 400)
        if not self.allow_writes and name not in ALLOWED_DATABASES:
            raise QueryError(
                f"Database {name} is not readable here: use telemetry, system or information_schema "
                "(ACCESS_DENIED)",
                497,
            )
        return name

    def run(
        self,
        sql: str,
        fmt: str,
        *,
        database: str,
        settings: Mapping[str, str],
        params: Mapping[str, str],
        tag: str,
    ) -> bytes:
        """The query's output in `fmt` (its own FORMAT clause wins); QueryError on failure or refusal."""
        session = self._session()
        try:
            session.query(f"USE `{database}`", "TabSeparated")
            for name, value in settings.items():
                session.query(f"SET {name} = {_literal(value)}", "TabSeparated")
            session.query(f"SET log_comment = {_literal(tag)}", "TabSeparated")
            if not self.allow_writes:
                session.query("SET readonly = 1", "TabSeparated")
                self._guard(session, sql, database, params)
            result = session.query(sql, fmt, params=dict(params) or None)
            data = result.bytes() if hasattr(result, "bytes") else result
            return bytes(data) if data is not None else b""
        except QueryError:
            raise
        except Exception as exc:
            raise error_from(exc) from None
        finally:
            session.close()

    @staticmethod
    def _guard(session: Any, sql: str, database: str, params: Mapping[str, str]) -> None:
        """Refused unless ClickHouse's parser sees exactly one statement that `classify` allows."""
        session.query("SELECT formatQuery({q:String})", "TabSeparated", params={"q": _param_escape(sql)})
        dump = session.query("EXPLAIN AST " + sql, "TSVRaw", params=dict(params) or None).bytes()
        classify(dump.decode("utf-8", errors="replace"), database)

    def cancel(self, tag: str) -> None:
        """Stop the query tagged `tag` (a client went away); a no-op when it has finished."""
        with self._kill_lock:
            session = self._session()
            try:
                session.query(
                    "KILL QUERY WHERE Settings['log_comment'] = {tag:String} ASYNC",
                    "TabSeparated",
                    params={"tag": _param_escape(tag)},
                )
            except Exception as exc:
                log.warning("could not cancel query %s: %s", tag, error_from(exc))
            finally:
                session.close()
