"""A ClickHouse HTTP interface over chDB: enough of it for curl, clickhouse-connect and Grafana's
ClickHouse plugin (clickhouse-go in HTTP mode), read-only unless writes are explicitly allowed.

    GET  /?query=SELECT+1                     query in the URL
    POST / (body: the query)                  or the URL's query followed by the body
    /ping, GET / without a query              "Ok."

Honoured: `default_format` (TabSeparated when absent) and FORMAT clauses, `database`, `param_<name>`
query parameters, `client_protocol_version` for Native results, settings passed as URL parameters
(applied with SET before the query), Basic auth / X-ClickHouse-User+Key / user+password parameters when a
password is configured, gzip/deflate request bodies, multipart form bodies. Answers carry
`X-ClickHouse-Format`, `X-ClickHouse-Query-Id`, `X-ClickHouse-Timezone`, `X-ClickHouse-Summary`; errors
carry ClickHouse's text, status and `X-ClickHouse-Exception-Code`.

Every request runs in a fresh chDB session on the shared engine, which ends with `SET readonly = 1`
before the query runs unless writes are allowed: the engine refuses INSERT, CREATE, ALTER, DROP, file(),
url() and every other write or outside access. One statement per request, as ClickHouse's HTTP interface.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from fleetforge.adapters.observability.native import NativeUnsupported, reencode
from fleetforge.adapters.observability.sqltext import shape

__all__ = ["ClickHouseHttpServer", "EndpointConfig", "QueryError", "QueryRunner"]

log = logging.getLogger("fleetforge.observability.clickhouse")

MAX_BODY: Final = 64 * 1024 * 1024
# URL parameters of the HTTP interface itself (never sent to the engine as settings).
_TRANSPORT: Final = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "enable_http_compression",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "user",
        "password",
        "quota_key",
        "role",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "http_response_buffer_size",
        "readonly",
        "add_http_cors_header",
    }
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CODE = re.compile(r"Code: (\d+)\.")
_NAME = re.compile(r"\(([A-Z_]{3,})\)")
_STATUS: Final[dict[int, int]] = {
    62: 400,
    47: 400,
    46: 400,
    36: 400,
    26: 400,
    27: 400,
    38: 400,
    41: 400,
    43: 400,
    53: 400,
    115: 400,
    456: 400,
    457: 400,
    60: 404,
    81: 404,
    164: 403,
    192: 403,
    193: 403,
    194: 403,
    497: 403,
    516: 401,
    159: 408,
    394: 500,
}
_CONTENT_TYPES: Final[dict[str, str]] = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
}


class QueryError(Exception):
    """A query failed; `code` is ClickHouse's error code (0 when unknown)."""

    def __init__(self, message: str, code: int = 0, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or _STATUS.get(code, 500)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Who may query and whether writes are allowed."""

    allow_writes: bool = False
    user: str = "default"
    password: str | None = None  # None: no authentication (loopback use)
    server_name: str = "fleetforge"


def _error_from(exc: BaseException) -> QueryError:
    text = str(exc).strip()
    codes = _CODE.findall(text)
    code = int(codes[-1]) if codes else 0
    # chDB nests "Code: N. DB::Exception: Code: N. DB::Exception: ..."; keep the innermost message.
    marker = text.rfind("DB::Exception: ")
    message = text[marker + len("DB::Exception: ") :] if marker >= 0 else text
    message = re.sub(r"\s*\(version [^)]*\)\.?\s*$", "", message).strip()
    name = _NAME.findall(message)
    suffix = "" if name else " (UNKNOWN)"
    return QueryError(f"{message}{suffix}", code)


class QueryRunner:
    """Runs one query per fresh chDB session on the engine owning `data_dir`."""

    def __init__(self, data_dir: str, *, allow_writes: bool = False, max_concurrency: int = 4) -> None:
        self.data_dir = data_dir
        self.allow_writes = allow_writes
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.version = ""  # filled in by `probe`
        self.timezone = "UTC"

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

    def run(
        self,
        sql: str,
        fmt: str,
        *,
        database: str | None,
        settings: Mapping[str, str],
        params: Mapping[str, str],
    ) -> bytes:
        """The query's output in `fmt` (its own FORMAT clause wins); QueryError on failure."""
        with self._slots:
            session = self._session()
            try:
                if database:
                    session.query(f"USE `{database}`", "TabSeparated")
                for name, value in settings.items():
                    session.query(f"SET {name} = {_setting_literal(value)}", "TabSeparated")
                if not self.allow_writes:
                    session.query("SET readonly = 1", "TabSeparated")
                result = session.query(sql, fmt, params=dict(params) or None)
                data = result.bytes() if hasattr(result, "bytes") else result
                return bytes(data) if data is not None else b""
            except QueryError:
                raise
            except Exception as exc:
                raise _error_from(exc) from None
            finally:
                session.close()


def _setting_literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Request:
    """The parts of one HTTP request the interface looks at."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        url = urlsplit(handler.path)
        self.path = url.path
        self.params = dict(parse_qsl(url.query, keep_blank_values=True))
        self.headers = handler.headers
        self.body = body
        self.form: dict[str, str] = {}
        ctype = handler.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            message = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if isinstance(name, str):
                    payload = part.get_payload(decode=True)
                    self.form[name] = (
                        payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
                    )
            self.body = b""

    def value(self, name: str) -> str | None:
        return self.form.get(name, self.params.get(name))

    def query_text(self) -> str:
        parts = [
            p for p in (self.value("query"), self.body.decode("utf-8", errors="replace")) if p and p.strip()
        ]
        return "\n".join(parts)


def _credentials(req: _Request) -> tuple[str, str]:
    auth = req.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user, password
        except (ValueError, UnicodeDecodeError):
            return "", ""
    if req.headers.get("X-ClickHouse-User"):
        return req.headers.get("X-ClickHouse-User", ""), req.headers.get("X-ClickHouse-Key", "")
    return req.value("user") or "default", req.value("password") or ""


class ClickHouseHttpServer:
    """Serves the interface on `host:port` from a background thread."""

    def __init__(
        self, runner: QueryRunner, config: EndpointConfig, host: str = "127.0.0.1", port: int = 8123
    ) -> None:
        self.runner = runner
        self.config = config
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="clickhouse-http", daemon=True
        )
        self.queries = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> ClickHouseHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- one request --------------------------------------------------------------------------

    def answer(self, req: _Request) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request."""
        query_id = req.value("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.runner.timezone,
            "X-ClickHouse-Server-Display-Name": self.config.server_name,
        }
        try:
            self._authenticate(req)
            sql = req.query_text()
            if not sql:
                if req.path in ("/", "/ping", "") or req.path.endswith("/ping"):
                    return 200, {**headers, "Content-Type": "text/plain; charset=UTF-8"}, b"Ok.\n"
                raise QueryError("Empty query (EMPTY_DATA_PASSED)", 62, 400)
            return self._run(req, sql, headers)
        except QueryError as exc:
            body = f"Code: {exc.code}. DB::Exception: {exc} (version {self.runner.version})\n".encode()
            return (
                exc.status,
                {
                    **headers,
                    "X-ClickHouse-Exception-Code": str(exc.code),
                    "Content-Type": "text/plain; charset=UTF-8",
                },
                body,
            )

    def _authenticate(self, req: _Request) -> None:
        if self.config.password is None:
            return
        user, password = _credentials(req)
        if user != self.config.user or not hmac.compare_digest(
            password.encode(), self.config.password.encode()
        ):
            raise QueryError(
                f"{user or 'default'}: Authentication failed: password is incorrect, or there is no "
                "user with such name. (AUTHENTICATION_FAILED)",
                516,
                401,
            )

    def _run(self, req: _Request, sql: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        found = shape(sql)
        if found.statements > 1:
            raise QueryError("Syntax error: Multi-statements are not allowed (SYNTAX_ERROR)", 62, 400)
        if not self.config.allow_writes and not found.is_read:
            raise QueryError(
                f"{found.kind or 'this'} queries are refused: the endpoint is read-only (start it "
                "with --allow-writes to permit writes) (READONLY)",
                164,
                403,
            )
        fmt = found.output_format or req.value("default_format") or "TabSeparated"
        database = req.value("database")
        if database and not _DB_NAME.match(database):
            raise QueryError(f"Database {database!r} is not a valid name (UNKNOWN_DATABASE)", 81, 404)
        params = {k[6:]: v for k, v in {**req.params, **req.form}.items() if k.startswith("param_")}
        settings = {
            k: v
            for k, v in req.params.items()
            if k not in _TRANSPORT and not k.startswith("param_") and _SETTING_NAME.match(k)
        }
        started = time.perf_counter()
        data = self.runner.run(sql, fmt, database=database, settings=settings, params=params)
        revision = int(req.value("client_protocol_version") or 0)
        if fmt == "Native" and revision > 0:
            try:
                data = reencode(data, revision)
            except NativeUnsupported as exc:
                raise QueryError(f"{exc} (NOT_IMPLEMENTED)", 48, 400) from None
        self.queries += 1
        elapsed_ns = int((time.perf_counter() - started) * 1e9)
        summary = {
            "read_rows": "0",
            "read_bytes": "0",
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": str(len(data)),
            "elapsed_ns": str(elapsed_ns),
        }
        return (
            200,
            {
                **headers,
                "X-ClickHouse-Format": fmt,
                "Content-Type": _CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8"),
                "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
            },
            data,
        )


def _decode_body(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding == "gzip":
        return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(raw)
    raise QueryError(
        f"Unsupported Content-Encoding {encoding!r}: send gzip, deflate or no encoding "
        "(UNKNOWN_COMPRESSION_METHOD)",
        89,
        400,
    )


def _handler(server: ClickHouseHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ClickHouse(fleetforge)"
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise QueryError(
                        f"Request body of {length} bytes is over the limit of {MAX_BODY} "
                        "(TOO_LARGE_STRING_SIZE)",
                        131,
                        413,
                    )
                raw = self.rfile.read(length) if length else b""
                body = _decode_body(raw, self.headers.get("Content-Encoding", ""))
                status, headers, payload = server.answer(_Request(self, body))
            except QueryError as exc:
                status, headers = (
                    exc.status,
                    {
                        "X-ClickHouse-Exception-Code": str(exc.code),
                        "Content-Type": "text/plain; charset=UTF-8",
                    },
                )
                payload = f"Code: {exc.code}. DB::Exception: {exc}\n".encode()
            except (ValueError, zlib.error) as exc:
                status, headers = 400, {"X-ClickHouse-Exception-Code": "27", "Content-Type": "text/plain"}
                text = f"Code: 27. DB::Exception: Cannot parse the request: {exc} (CANNOT_PARSE_INPUT)\n"
                payload = text.encode()
            self._reply(status, headers, payload)

        do_GET = do_POST = do_HEAD = _serve

        def do_PUT(self) -> None:
            self._reply(405, {"Content-Type": "text/plain"}, b"Only GET, HEAD and POST are supported.\n")

        do_DELETE = do_PATCH = do_PUT

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

    return Handler
