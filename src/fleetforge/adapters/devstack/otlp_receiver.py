"""The embedded stack's OTLP receiver: gRPC (default :4317) and HTTP (default :4318, protobuf or JSON,
optionally gzip) for traces, metrics and logs. Spans, metric points and log records go into the
collector ClickHouse exporter's tables in database telemetry; metrics also feed the Prometheus bridge.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from typing import Any, Final, cast

import anyio.to_thread
import grpc  # type: ignore[import-untyped]
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from fleetforge.adapters.devstack.otlp_rows import Row, log_rows, metric_rows, parse_json, span_rows
from fleetforge.adapters.devstack.prombridge import PrometheusBridge
from fleetforge.adapters.http.server import (
    BackgroundServer,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    UnsupportedEncoding,
    read_body,
)
from fleetforge.domain.errors import ConfigError

__all__ = ["OtelWriter", "OtlpGrpcServer", "OtlpHttpServer", "OtlpSink"]

log = logging.getLogger("fleetforge.observability.otlp")
MAX_MESSAGE: Final = 32 * 1024 * 1024


class OtelWriter:
    """Inserts rows into the otel_* tables through its own chDB session (UTC for the timestamps' text)."""

    def __init__(self, data_dir: str) -> None:
        import chdb.session

        self._session: Any = cast(Any, chdb.session.Session(data_dir))  # type: ignore[no-untyped-call]
        self._session.query("SET session_timezone = 'UTC'", "TabSeparated")
        self._lock = threading.Lock()
        self.rows: Counter[str] = Counter()

    def write(self, table: str, rows: Iterable[Row]) -> int:
        lines = "\n".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in rows)
        if not lines:
            return 0
        with self._lock:
            self._session.query(f"INSERT INTO telemetry.{table} FORMAT JSONEachRow\n{lines}", "TabSeparated")
        count = lines.count("\n") + 1
        self.rows[table] += count
        return count

    def close(self) -> None:
        with self._lock:
            self._session.close()


class OtlpSink:
    """What both transports call with a parsed request."""

    def __init__(self, writer: OtelWriter, bridge: PrometheusBridge) -> None:
        self.writer = writer
        self.bridge = bridge

    def traces(self, req: ExportTraceServiceRequest) -> None:
        self.writer.write("otel_traces", span_rows(req))

    def metrics(self, req: ExportMetricsServiceRequest) -> None:
        self.bridge.record(req)
        tables: dict[str, list[Row]] = {}
        for table, row in metric_rows(req):
            tables.setdefault(table, []).append(row)
        for table, rows in tables.items():
            self.writer.write(table, rows)

    def logs(self, req: ExportLogsServiceRequest) -> None:
        self.writer.write("otel_logs", log_rows(req))


def _guarded(name: str, call: Callable[[Any], None], request: Any, context: Any) -> None:
    try:
        call(request)
    except Exception as exc:
        log.warning("OTLP %s export failed: %s", name, exc)
        context.abort(grpc.StatusCode.UNAVAILABLE, f"storing {name} failed: {str(exc).splitlines()[0]}")


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        _guarded("traces", self.sink.traces, request, context)
        return ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink

    def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
        _guarded("metrics", self.sink.metrics, request, context)
        return ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink

    def Export(self, request: ExportLogsServiceRequest, context: Any) -> ExportLogsServiceResponse:
        _guarded("logs", self.sink.logs, request, context)
        return ExportLogsServiceResponse()


class OtlpGrpcServer:
    """OTLP/gRPC on host:port (insecure; bind loopback unless the network is trusted)."""

    def __init__(self, sink: OtlpSink, host: str = "127.0.0.1", port: int = 4317) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)],
        )
        adders: list[tuple[Any, Any]] = [
            (trace_service_pb2_grpc.add_TraceServiceServicer_to_server, _Traces(sink)),
            (metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server, _Metrics(sink)),
            (logs_service_pb2_grpc.add_LogsServiceServicer_to_server, _Logs(sink)),
        ]
        for add, servicer in adders:
            add(servicer, self._server)
        bound = 0
        try:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise ConfigError(
                f"cannot serve OTLP/gRPC on {host}:{port}: the port is in use or the address is "
                "not on this machine; pass --otlp-grpc-port (FLEETFORGE_OTLP_GRPC_PORT)"
            )
        self.address = (host, int(bound))

    def start(self) -> OtlpGrpcServer:
        self._server.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        self._server.stop(grace_s).wait(grace_s + 1)


_HTTP_ROUTES: Final[Mapping[str, tuple[type[Any], type[Any], str]]] = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, "traces"),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse, "metrics"),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, "logs"),
}


class OtlpHttpServer:
    """OTLP/HTTP: POST /v1/traces, /v1/metrics, /v1/logs with application/x-protobuf or application/json.

    Bodies may be gzip or deflate; either way at most MAX_MESSAGE bytes, as sent and once decompressed.
    A Host header naming anything but an IP address, localhost or one of `allowed_hosts` gets 421.
    """

    def __init__(
        self, sink: OtlpSink, host: str = "127.0.0.1", port: int = 4318, allowed_hosts: Iterable[str] = ()
    ) -> None:
        self._server = BackgroundServer(
            _OtlpHttpApp(sink),
            host=host,
            port=port,
            name="otlp-http",
            allowed_hosts=allowed_hosts,
            port_flag="--otlp-http-port (FLEETFORGE_OTLP_HTTP_PORT)",
        )

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def start(self) -> OtlpHttpServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


_TEXT: Final = "text/plain; charset=utf-8"


class _OtlpHttpApp:
    """The OTLP/HTTP ASGI app; parsing and storing run in worker threads."""

    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, ctype, body = await self._answer(scope, receive, headers)
        except ConnectionResetError:
            log.debug("OTLP/HTTP client went away before sending its whole request")
            return
        extra = [(b"allow", b"POST")] if status == 405 else []
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"cache-control", b"no-store"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive, headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        route = _HTTP_ROUTES.get(scope["path"])
        if route is None:
            return 404, _TEXT, b"unknown path: POST /v1/traces, /v1/metrics or /v1/logs\n"
        if scope["method"] != "POST":
            return 405, _TEXT, b"OTLP/HTTP takes POST only\n"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_MESSAGE:  # before `Expect: 100-continue` is answered
            return 413, _TEXT, f"{BodyTooLarge(MAX_MESSAGE, decoded=False)}\n".encode()
        try:
            raw = await read_body(receive, headers.get("content-encoding", ""), limit=MAX_MESSAGE)
        except BodyTooLarge as exc:
            return 413, _TEXT, f"{exc}\n".encode()
        except UnsupportedEncoding as exc:
            return 415, _TEXT, f"{exc}\n".encode()
        is_json = headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        return await anyio.to_thread.run_sync(self._store, route, raw, is_json)

    def _store(self, route: tuple[type[Any], type[Any], str], raw: bytes, is_json: bool) -> tuple[int, str, bytes]:
        request_type, response_type, name = route
        try:
            message = parse_json(raw, request_type()) if is_json else request_type.FromString(raw)
        except Exception as exc:
            return 400, _TEXT, f"cannot parse the OTLP {name} request: {exc}\n".encode()
        try:
            getattr(self.sink, name)(message)
        except Exception as exc:
            log.warning("OTLP %s export failed: %s", name, exc)
            return 503, _TEXT, f"storing {name} failed; retry later\n".encode()
        response = response_type()
        if is_json:
            return 200, "application/json", json_format.MessageToJson(response).encode()
        return 200, "application/x-protobuf", response.SerializeToString()
