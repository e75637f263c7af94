"""A ClickHouse HTTP interface over chDB for curl, clickhouse-connect, the ClickHouse JS client and Grafana's
ClickHouse plugin (clickhouse-go in HTTP mode); read-only unless writes are explicitly allowed.

    GET  /?query=SELECT+1                     query in the URL
    POST / (body: the query)                  or the URL's query followed by the body
    /ping, GET / without a query              "Ok." (no authentication, as ClickHouse)

Served by `BackgroundServer` (uvicorn): chunked bodies, keep-alive and `Expect: 100-continue` work, `Host`
is checked, request bodies are bounded after decompression. Honoured: `default_format` and FORMAT clauses,
`database`, `param_<name>` query parameters, `query_id`, `session_id` (accepted; nothing persists between
requests, since SET and temporary tables are refused), `client_protocol_version` for Native results,
allowed settings as URL parameters, Basic auth / X-ClickHouse-User+Key / user+password parameters when a
password is configured, gzip/deflate request bodies, gzip/deflate responses with `enable_http_compression=1`,
multipart form bodies. Not supported: `compress=1`/`decompress=1` (ClickHouse's native LZ4 framing), external
data tables. A client that disconnects has its query killed. What runs is decided by `chrunner`/`chguard`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Final
from urllib.parse import parse_qsl

from fleetforge.adapters.devstack.chrunner import QueryError, QueryRunner
from fleetforge.adapters.devstack.native import NativeUnsupported, reencode
from fleetforge.adapters.devstack.sqltext import shape
from fleetforge.adapters.http.server import (
    BackgroundServer,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    UnsupportedEncoding,
    read_body,
)

__all__ = ["ClickHouseHttpServer", "EndpointConfig", "QueryError", "QueryRunner"]

log = logging.getLogger("fleetforge.observability.clickhouse")

MAX_BODY: Final = 16 * 1024 * 1024
# URL parameters of the HTTP interface itself (never sent to the engine as settings).
_TRANSPORT: Final = frozenset(
    {
        "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
        "compress", "decompress", "enable_http_compression", "http_zlib_compression_level", "buffer_size",
        "wait_end_of_query", "client_protocol_version", "user", "password", "quota_key", "role",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms", "http_response_buffer_size",
        "readonly", "add_http_cors_header", "cancel_http_readonly_queries_on_client_close",
        "output_format_parallel_formatting",
    }
)
# Values echoed into response headers, or used as names, must look like this (no CR/LF, no spaces).
_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_FORMAT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
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
_TEXT: Final = "text/plain; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Who may query, whether writes are allowed, and how many queries run at once."""

    allow_writes: bool = False
    user: str = "default"
    password: str | None = None  # None: no authentication (loopback use)
    server_name: str = "fleetforge"
    max_concurrent_queries: int = 4
    queue_timeout_s: float = 10.0  # how long a query waits for a free slot before 503


@dataclass(slots=True)
class _Request:
    """The parts of one HTTP request the interface looks at."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    form: dict[str, str]

    @classmethod
    def build(cls, scope: Scope, body: bytes) -> _Request:
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        query_string = scope.get("query_string", b"").decode("utf-8", errors="replace")
        params = dict(parse_qsl(query_string, keep_blank_values=True))
        form: dict[str, str] = {}
        ctype = headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if isinstance(name, str):
                    payload = part.get_payload(decode=True)
                    form[name] = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
            body = b""
        return cls(scope["method"], scope["path"], params, headers, body, form)

    def value(self, name: str) -> str | None:
        return self.form.get(name, self.params.get(name))

    def query_text(self) -> str:
        parts = [p for p in (self.value("query"), self.body.decode("utf-8", errors="replace")) if p and p.strip()]
        return "\n".join(parts)


def _credentials(req: _Request) -> tuple[str, str]:
    auth = req.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user, password
        except (ValueError, UnicodeDecodeError):
            return "", ""
    if req.headers.get("x-clickhouse-user"):
        return req.headers.get("x-clickhouse-user", ""), req.headers.get("x-clickhouse-key", "")
    return req.value("user") or "default", req.value("password") or ""


def _token(req: _Request, name: str) -> str | None:
    value = req.value(name)
    if value is not None and not _TOKEN.match(value):
        raise QueryError(
            f"{name} must be 1-128 characters of A-Z a-z 0-9 . _ : - (BAD_ARGUMENTS)", 36, 400
        )
    return value


def _compressor(req: _Request) -> tuple[str, zlib._Compress] | None:
    if req.value("enable_http_compression") not in ("1", "true"):
        return None
    accepted = [e.split(";")[0].strip().lower() for e in req.headers.get("accept-encoding", "").split(",")]
    level = req.value("http_zlib_compression_level") or "3"
    level_n = int(level) if level.isdigit() and 1 <= int(level) <= 9 else 3
    if "gzip" in accepted:
        return "gzip", zlib.compressobj(level_n, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if "deflate" in accepted:
        return "deflate", zlib.compressobj(level_n)
    return None


class ClickHouseHttpServer:
    """Serves the interface on `host:port` from a background thread."""

    def __init__(
        self,
        runner: QueryRunner,
        config: EndpointConfig,
        host: str = "127.0.0.1",
        port: int = 8123,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.runner = runner
        self.config = config
        self.queries = 0
        self._pool = ThreadPoolExecutor(config.max_concurrent_queries, thread_name_prefix="clickhouse-query")
        self._slots: asyncio.Semaphore | None = None
        self._server = BackgroundServer(
            self._app, host=host, port=port, name="clickhouse-http", allowed_hosts=allowed_hosts,
            port_flag="--http-port",
        )

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def start(self) -> ClickHouseHttpServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- ASGI ---------------------------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {"X-ClickHouse-Server-Display-Name": self.config.server_name}
        if scope["method"] not in ("GET", "HEAD", "POST"):
            await _respond(send, scope, 405, {"Allow": "GET, HEAD, POST"}, b"Only GET, HEAD and POST are supported.\n")
            return
        try:
            encoding = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-encoding"), "")
            body = await read_body(receive, encoding, limit=MAX_BODY)
            req = _Request.build(scope, body)
            status, extra, payload = await self.answer(req, receive)
            headers.update(extra)
            if status == 200 and (codec := _compressor(req)) is not None:
                name, compressor = codec
                payload = compressor.compress(payload) + compressor.flush()
                headers["Content-Encoding"] = name
        except ConnectionError:
            return  # the client went away while sending its query: nothing to answer
        except (BodyTooLarge, UnsupportedEncoding, ValueError) as exc:
            code, status = (396, 413) if isinstance(exc, BodyTooLarge) else (27, 400)
            name = "TOO_LARGE_REQUEST" if isinstance(exc, BodyTooLarge) else "CANNOT_PARSE_INPUT"
            payload = f"Code: {code}. DB::Exception: {exc} ({name})\n".encode()
            headers.update({"X-ClickHouse-Exception-Code": str(code), "Content-Type": _TEXT})
        await _respond(send, scope, status, headers, payload)

    async def _watch(self, receive: Receive) -> None:
        """Returns when the client disconnects."""
        while (await receive())["type"] != "http.disconnect":
            pass

    async def answer(self, req: _Request, receive: Receive) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request."""
        headers = {"X-ClickHouse-Timezone": self.runner.timezone}
        try:
            query_id = _token(req, "query_id") or str(uuid.uuid4())
            headers["X-ClickHouse-Query-Id"] = query_id
            _token(req, "session_id")
            sql = req.query_text()
            if not sql and (req.path.endswith("/ping") or req.path in ("/", "")):
                return 200, {**headers, "Content-Type": _TEXT}, b"Ok.\n"
            self._authenticate(req)
            if not sql:
                raise QueryError("Empty query (EMPTY_DATA_PASSED)", 62, 400)
            return await self._run(req, sql, headers, query_id, receive)
        except QueryError as exc:
            body = f"Code: {exc.code}. DB::Exception: {exc} (version {self.runner.version})\n".encode()
            return exc.status, {**headers, "X-ClickHouse-Exception-Code": str(exc.code), "Content-Type": _TEXT}, body

    def _authenticate(self, req: _Request) -> None:
        if self.config.password is None:
            return
        user, password = _credentials(req)
        if user != self.config.user or not hmac.compare_digest(password.encode(), self.config.password.encode()):
            shown = user if _TOKEN.match(user or "-") else "?"
            raise QueryError(
                f"{shown or 'default'}: Authentication failed: password is incorrect, or there is no user with "
                "such name. (AUTHENTICATION_FAILED)",
                516,
                401,
            )

    async def _run(
        self, req: _Request, sql: str, headers: dict[str, str], query_id: str, receive: Receive
    ) -> tuple[int, dict[str, str], bytes]:
        for flag in ("compress", "decompress"):
            if req.value(flag) in ("1", "true"):
                raise QueryError(
                    f"{flag}=1 (ClickHouse's native LZ4 block framing) is not supported here: use HTTP compression "
                    "(enable_http_compression=1 with Accept-Encoding: gzip, or Content-Encoding: gzip) "
                    "(NOT_IMPLEMENTED)",
                    48,
                    400,
                )
        if req.value("readonly") == "0" and not self.config.allow_writes:
            raise QueryError("readonly=0: the endpoint is read-only (READONLY)", 164, 403)
        fmt = shape(sql).output_format or req.value("default_format") or "TabSeparated"
        if not _FORMAT.match(fmt):
            raise QueryError("Unknown output format (UNKNOWN_FORMAT)", 73, 400)
        database = self.runner.check_database(req.value("database"))
        values = {**req.params, **req.form}
        params = {k[6:]: v for k, v in values.items() if k.startswith("param_")}
        requested = {k: v for k, v in req.params.items() if k not in _TRANSPORT and not k.startswith("param_")}
        settings = self.runner.settings_for(requested)
        started = time.perf_counter()
        data = await self._execute(sql, fmt, database, settings, params, receive)
        protocol = req.value("client_protocol_version") or "0"
        revision = int(protocol) if protocol.isdigit() else 0
        if fmt == "Native" and revision > 0:
            try:
                data = reencode(data, revision)
            except NativeUnsupported as exc:
                raise QueryError(f"{exc} (NOT_IMPLEMENTED)", 48, 400) from None
        self.queries += 1
        summary = {
            "read_rows": "0", "read_bytes": "0", "written_rows": "0", "written_bytes": "0",
            "total_rows_to_read": "0", "result_rows": "0", "result_bytes": str(len(data)),
            "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
        }
        return (
            200,
            {
                **headers,
                "X-ClickHouse-Format": fmt,
                "Content-Type": _CONTENT_TYPES.get(fmt, _TEXT),
                "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
            },
            data,
        )

    async def _execute(
        self, sql: str, fmt: str, database: str, settings: Mapping[str, str], params: Mapping[str, str],
        receive: Receive,
    ) -> bytes:
        """Run in a worker thread; a client disconnect kills the query and frees its slot."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_concurrent_queries)
        slots = self._slots
        watcher: asyncio.Future[Any] = asyncio.ensure_future(self._watch(receive))
        try:
            acquire: asyncio.Future[Any] = asyncio.ensure_future(slots.acquire())
            done, _ = await asyncio.wait({acquire, watcher}, timeout=self.config.queue_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if acquire not in done:
                acquire.cancel()
                if acquire.done() and not acquire.cancelled():
                    slots.release()
                if watcher in done:
                    raise ConnectionResetError("client disconnected while waiting")
                raise QueryError(
                    f"Too many simultaneous queries: all {self.config.max_concurrent_queries} slots stayed busy "
                    f"for {self.config.queue_timeout_s:g} s (TOO_MANY_SIMULTANEOUS_QUERIES)", 202, 503
                )
            try:
                tag = f"fleetforge-http-{uuid.uuid4()}"
                loop = asyncio.get_running_loop()
                task: asyncio.Future[Any] = loop.run_in_executor(
                    self._pool,
                    lambda: self.runner.run(sql, fmt, database=database, settings=settings, params=params, tag=tag),
                )
                done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if task not in done:
                    await asyncio.to_thread(self.runner.cancel, tag)
                    with contextlib.suppress(QueryError):
                        await task
                    log.info("query %s cancelled: the client disconnected", tag)
                    raise ConnectionResetError("client disconnected")
                data: bytes = task.result()
                return data
            finally:
                slots.release()
        finally:
            watcher.cancel()


async def _respond(send: Send, scope: Scope, status: int, headers: Mapping[str, str], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    # a result must never run as a script or style of another origin's page, whatever its format
    raw += [(b"x-content-type-options", b"nosniff"), (b"cross-origin-resource-policy", b"same-origin")]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
