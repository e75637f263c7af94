"""The embedded analytics store: chDB (the ClickHouse engine in-process) persisting to a data dir.

One process owns a data dir; a second process opening it gets `AnalyticsUnavailable` naming the
folder. Parameters are sent as ClickHouse query parameters in their text form, envelopes as an
Arrow stream: no value is ever spliced into SQL text.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pyarrow as pa  # type: ignore[import-untyped]

from fleetforge.domain.errors import disk_full_message
from fleetforge.ports.analytics import AnalyticsError, AnalyticsUnavailable

__all__ = ["ChdbAnalytics", "param_text"]

_MIN_PART = 2000  # smaller batches go in one INSERT
_IDS_TABLE = "CREATE TEMPORARY TABLE IF NOT EXISTS fleetforge_batch_ids (event_id String) ENGINE = Memory"
_KNOWN = "SELECT event_id FROM telemetry.event_ids WHERE event_id IN (SELECT event_id FROM fleetforge_batch_ids)"
_INSERT = "INSERT INTO telemetry.envelopes_in (event_id, envelope)"
_SCHEMA = pa.schema([("event_id", pa.string()), ("envelope", pa.string())])
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"}
_TRANS = str.maketrans(_ESCAPES)


def _quoted(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.translate(_TRANS).replace("'", "\\'") + "'"
    return param_text(value)


def param_text(value: Any) -> str:
    """A Python value in the text form ClickHouse parses query parameters from."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, str):
        return value.translate(_TRANS)
    if isinstance(value, dt.datetime):
        naive: dt.datetime = value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
        return naive.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_quoted(v) for v in value) + "]"
    raise TypeError(f"cannot bind a {type(value).__name__} as a ClickHouse query parameter")


def clean_text(value: str | bytes) -> str:
    """Valid UTF-8 text: invalid bytes and lone surrogates become U+FFFD."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
    return value


def envelope_table(batch: Sequence[tuple[str, str | bytes]]) -> pa.Table:
    """(event_id, envelope) pairs as an Arrow table, with invalid text made valid UTF-8."""
    ids = [i for i, _ in batch]
    envs = [e for _, e in batch]
    try:
        return pa.table([pa.array(ids, pa.string()), pa.array(envs, pa.string())], schema=_SCHEMA)
    except (pa.ArrowException, UnicodeError, TypeError):
        return pa.table([pa.array([clean_text(i) for i in ids], pa.string()),
                         pa.array([clean_text(e) for e in envs], pa.string())], schema=_SCHEMA)


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


class ChdbAnalytics:
    """chDB on `data_dir` (created on first use), with `insert_sessions` sessions for parallel inserts.

    chDB runs one engine per process on one data dir: close every store of a dir before opening
    another dir in the same process.
    """

    backend = "chdb"

    def __init__(self, data_dir: str | Path, *, insert_sessions: int = 2) -> None:
        import chdb.session  # imported here: loading the engine takes a moment

        self.data_dir = Path(data_dir)
        self._sessions: list[Any] = []
        self._locks: list[threading.Lock] = []
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for _ in range(max(1, insert_sessions)):
                self._sessions.append(chdb.session.Session(str(self.data_dir)))  # type: ignore[no-untyped-call]
                self._locks.append(threading.Lock())
        except Exception as exc:  # chDB raises RuntimeError for a dir owned elsewhere or a broken dir
            self.close()
            raise AnalyticsUnavailable(
                f"cannot open the chDB data dir {self.data_dir}: {_first_line(exc)}. A chDB data dir is "
                "owned by one process (and a process opens one data dir at a time): stop the other "
                "fleetforge process using it, or query the server with --clickhouse-url"
            ) from exc
        self._pool = ThreadPoolExecutor(max_workers=len(self._sessions), thread_name_prefix="chdb-insert")

    def _session(self, index: int) -> Any:
        if not self._sessions:
            raise AnalyticsUnavailable(f"the chDB store on {self.data_dir} is closed")
        return self._sessions[index]

    def _query(self, sql: str, fmt: str, params: Mapping[str, Any] | None) -> Any:
        bound = {k: param_text(v) for k, v in params.items()} if params else None
        with self._locks[0] if self._locks else threading.Lock():
            session = self._session(0)
            try:
                return session.query(sql, fmt, params=bound)
            except Exception as exc:
                raise AnalyticsError(self._failed("query", exc)) from exc

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._query(sql, "TabSeparated", params)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        table = self._query(sql, "ArrowTable", params)
        columns = [c.to_pylist() for c in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def text(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None) -> str:
        result = self._query(sql, fmt, params)
        data = result.bytes() if hasattr(result, "bytes") else result
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)

    def _insert_part(self, index: int, part: Sequence[tuple[str, str | bytes]]) -> None:
        payload = arrow_stream(envelope_table(part))
        with self._locks[index]:
            inserter = self._session(index).send_insert(_INSERT, "ArrowStream")
            try:
                inserter.append(payload)
                inserter.finish()
            except BaseException:
                inserter.cancel()
                raise

    def insert_envelopes(self, batch: Sequence[tuple[str, str | bytes]]) -> None:
        """Insert the batch, split over the insert sessions (each part is one INSERT)."""
        if not batch:
            return
        n = len(self._sessions) if len(batch) >= 2 * _MIN_PART else 1
        size = -(-len(batch) // n)
        parts = [batch[i:i + size] for i in range(0, len(batch), size)]
        try:
            if len(parts) == 1:
                self._insert_part(0, parts[0])
            else:
                for future in [self._pool.submit(self._insert_part, i, p) for i, p in enumerate(parts)]:
                    future.result()
        except AnalyticsError:
            raise
        except Exception as exc:
            raise AnalyticsError(self._failed(f"insert of {len(batch)} envelopes", exc)) from exc

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Looks the ids up through a session-local temporary table (an Arrow insert, then a join)."""
        if not ids:
            return set()
        payload = arrow_stream(pa.table({"event_id": pa.array([clean_text(i) for i in ids], pa.string())}))
        with self._locks[0]:
            session = self._session(0)
            try:
                session.query(_IDS_TABLE, "TabSeparated")
                session.query("TRUNCATE TABLE fleetforge_batch_ids", "TabSeparated")
                inserter = session.send_insert("INSERT INTO fleetforge_batch_ids (event_id)", "ArrowStream")
                try:
                    inserter.append(payload)
                    inserter.finish()
                except BaseException:
                    inserter.cancel()
                    raise
                found = session.query(_KNOWN, "ArrowTable")
            except Exception as exc:
                raise AnalyticsError(self._failed("event id lookup", exc)) from exc
        return {str(v) for v in found.column(0).to_pylist()}

    def _failed(self, what: str, exc: BaseException) -> str:
        """The message of a failed `what`; a full disk says where and what to do."""
        line = _first_line(exc)
        if any(sign in line for sign in _DISK_FULL):
            return disk_full_message(self.data_dir, f"ClickHouse {what} failed: {line}")
        return f"ClickHouse {what} failed: {line}" if what == "query" else f"{what} failed: {line}"

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for lock, session in zip(self._locks, self._sessions, strict=False):
            with lock:
                session.close()
        self._sessions = []


_DISK_FULL: Final = ("NOT_ENOUGH_SPACE", "No space left on device", "Cannot reserve")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
