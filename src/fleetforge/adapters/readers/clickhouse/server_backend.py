"""The distributed analytics store: a ClickHouse server over HTTP via clickhouse-connect.

The URL is `FLEETFORGE_CLICKHOUSE_URL`, e.g. `http://user:password@clickhouse:8123` (https for
TLS). The client connects lazily and reconnects after a connection failure, so a sink survives a
server restart. Parameters use server-side binding (`{name:Type}`); inserts use the Native format.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from fleetforge.adapters.readers.clickhouse.chdb_backend import clean_text
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.secrets import redact_url
from fleetforge.ports.analytics import AnalyticsError, AnalyticsUnavailable

__all__ = ["ClickHouseServerAnalytics"]

_COLUMNS = ["event_id", "envelope"]
_TSV = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class ClickHouseServerAnalytics:
    """A ClickHouse server at `url` (http[s]://[user[:password]@]host[:port][/database])."""

    backend = "clickhouse"

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, send_receive_timeout_s: float = 300.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "clickhouse", "clickhouses") or not parts.hostname:
            raise ConfigError(f"--clickhouse-url / FLEETFORGE_CLICKHOUSE_URL: got {redact_url(url)!r}, "
                              "expected http[s]://[user[:password]@]host[:port]")
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._send_receive_timeout_s = send_receive_timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._client is None:
            import clickhouse_connect

            logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)  # errors are re-raised below
            try:
                self._client = clickhouse_connect.get_client(
                    dsn=self.url, connect_timeout=self._connect_timeout_s,
                    send_receive_timeout=self._send_receive_timeout_s, autogenerate_session_id=False)
            except Exception as exc:
                raise AnalyticsUnavailable(f"cannot reach ClickHouse at {redact_url(self.url)}: "
                                           f"{_short(exc)}") from exc
        return self._client

    def _call(self, what: str, fn: Any) -> Any:
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

        with self._lock:
            client = self._get()
            try:
                return fn(client)
            except OperationalError as exc:
                self._client = None
                raise AnalyticsUnavailable(f"ClickHouse at {redact_url(self.url)} is unavailable during "
                                           f"{what}: {_short(exc)}") from exc
            except DatabaseError as exc:
                raise AnalyticsError(f"ClickHouse {what} failed: {_short(exc)}") from exc

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._call("a statement", lambda c: c.command(sql, parameters=dict(params or {})))

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        result = self._call("a query", lambda c: c.query(sql, parameters=dict(params or {})))
        return [tuple(r) for r in result.result_rows]

    def text(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None) -> str:
        data = self._call("a query", lambda c: c.raw_query(sql, parameters=dict(params or {}), fmt=fmt))
        return bytes(data).decode("utf-8", errors="replace")

    def insert_envelopes(self, batch: Sequence[tuple[str, str | bytes]]) -> None:
        if not batch:
            return
        data = [[clean_text(i), clean_text(e)] for i, e in batch]
        self._call("an insert", lambda c: c.insert("telemetry.envelopes_in", data, column_names=_COLUMNS))

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Looks the ids up with the batch sent as an external table (ClickHouse external data)."""
        if not ids:
            return set()
        from clickhouse_connect.driver.external import ExternalData

        tsv = "\n".join(clean_text(i).translate(_TSV) for i in ids).encode()
        ext = ExternalData(data=tsv, file_name="fleetforge_batch_ids", fmt="TabSeparated",
                           structure="event_id String")
        result = self._call("an event id lookup", lambda c: c.query(
            "SELECT event_id FROM telemetry.event_ids WHERE event_id IN fleetforge_batch_ids", external_data=ext))
        return {str(r[0]) for r in result.result_rows}

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]
