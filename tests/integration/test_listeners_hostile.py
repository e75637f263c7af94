"""The dashboard and the OTLP receivers against hostile clients: DNS-rebinding Host headers, compression
bombs over HTTP and gRPC, chunked and `Expect: 100-continue` bodies, CR/LF in parameters, clients that
hang up mid-request.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from fleetforge.adapters.devstack.otlp_receiver import MAX_MESSAGE, OtlpGrpcServer, OtlpHttpServer, OtlpSink
from fleetforge.adapters.views.dashboard.app import Dashboard, DashboardServer

pytestmark = pytest.mark.timeout(180)

BOMB_MIB = 400
RSS_BOUND_MB = 200


@dataclass
class RecordingSink:
    """Stands in for OtlpSink: keeps what arrives."""

    received: list[tuple[str, Any]] = field(default_factory=list)

    def traces(self, req: Any) -> None:
        self.received.append(("traces", req))

    def metrics(self, req: Any) -> None:
        self.received.append(("metrics", req))

    def logs(self, req: Any) -> None:
        self.received.append(("logs", req))


@dataclass
class Target:
    """One listener under test: its base URL and a request it answers with success."""

    name: str
    base: str
    method: str
    path: str
    body: bytes
    ok: int = 200


def _trace_request() -> bytes:
    span = Span(trace_id=b"\1" * 16, span_id=b"\2" * 8, name="hostile", start_time_unix_nano=1, end_time_unix_nano=2)
    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
    return cast(bytes, req.SerializeToString())


@pytest.fixture(scope="module")
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(scope="module")
def dashboard() -> Iterator[Target]:
    server = DashboardServer(Dashboard(None, None), port=0).start()
    yield Target("dashboard", server.url.rstrip("/"), "GET", "/api/meta", b"")
    server.stop()


@pytest.fixture(scope="module")
def otlp_http(sink: RecordingSink) -> Iterator[Target]:
    server = OtlpHttpServer(cast(OtlpSink, sink), port=0).start()
    host, port = server.address
    yield Target("otlp-http", f"http://{host}:{port}", "POST", "/v1/traces", _trace_request())
    server.stop()


@pytest.fixture(params=["dashboard", "otlp_http"])
def target(request: pytest.FixtureRequest) -> Target:
    return cast(Target, request.getfixturevalue(request.param))


def _hwm_mb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM"))


def _rss_mb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a list that holds, on exit, how many MB this process's peak RSS grew inside the block."""
    growth: list[int] = []
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield growth
    finally:
        stop.set()
        sampler.join()
        top = max(peak[0], _hwm_mb()) if resettable else peak[0]
        growth.append(top - base)


def _gzip_bomb(mib: int) -> bytes:
    """`mib` MiB of one byte value, gzip-compressed (about 1/1000 of that)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(comp.compress(block) for _ in range(mib)) + comp.flush()


def _raw(base: str, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh connection; everything the server answers until it closes or goes quiet."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except TimeoutError:
            pass
        return out


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


# --- Host header (DNS rebinding) -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:80", "attacker.localhost.evil.example"])
def test_a_foreign_host_name_gets_421(target: Target, host: str) -> None:
    r = httpx.request(target.method, target.base + target.path, content=target.body, headers={"Host": host})
    assert r.status_code == 421, r.text
    assert "evil" not in "".join(f"{k}{v}" for k, v in r.headers.items())


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}"])
def test_ip_literals_and_localhost_pass(target: Target, host: str) -> None:
    port = target.base.rsplit(":", 1)[1]
    r = httpx.request(target.method, target.base + target.path, content=target.body,
                      headers={"Host": host.format(port=port)})
    assert r.status_code == target.ok, r.text


def test_allowed_host_names_pass() -> None:
    server = DashboardServer(Dashboard(None, None), port=0, allowed_hosts=["dash.internal"]).start()
    try:
        assert httpx.get(server.url + "api/meta", headers={"Host": "dash.internal:8080"}).status_code == 200
        assert httpx.get(server.url + "api/meta", headers={"Host": "other.internal"}).status_code == 421
    finally:
        server.stop()


# --- compression bombs ------------------------------------------------------------------------------


def test_otlp_http_gzip_bomb_gets_413_in_bounded_memory(otlp_http: Target, sink: RecordingSink) -> None:
    bomb = _gzip_bomb(BOMB_MIB)
    assert len(bomb) < 1024 * 1024
    before = len(sink.received)
    for encoding in ("gzip", "x-gzip"):
        with peak_rss_growth() as growth:
            r = httpx.post(otlp_http.base + "/v1/traces", content=bomb, timeout=60,
                           headers={"Content-Encoding": encoding, "Content-Type": "application/x-protobuf"})
        assert r.status_code == 413, r.text
        assert "decompressed" in r.text
        assert growth[0] < RSS_BOUND_MB, f"RSS grew by {growth[0]} MB"
    assert len(sink.received) == before


def test_otlp_http_deflate_bomb_and_bad_encodings(otlp_http: Target) -> None:
    comp = zlib.compressobj(9)
    bomb = b"".join(comp.compress(b"\0" * (1 << 20)) for _ in range(64)) + comp.flush()
    with peak_rss_growth() as growth:
        r = httpx.post(otlp_http.base + "/v1/traces", content=bomb, headers={"Content-Encoding": "deflate"})
    assert r.status_code == 413
    assert growth[0] < RSS_BOUND_MB
    for encoding, body in (("br", b"x"), ("gzip", b"not gzip")):
        r = httpx.post(otlp_http.base + "/v1/traces", content=body, headers={"Content-Encoding": encoding})
        assert r.status_code == 415, r.text


def test_otlp_http_declared_oversize_gets_413_before_100_continue(otlp_http: Target) -> None:
    head = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {MAX_MESSAGE + 1}\r\nExpect: 100-continue\r\n\r\n").encode()
    answer = _raw(otlp_http.base, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"100 Continue" not in answer


def test_dashboard_never_reads_a_bomb(dashboard: Target) -> None:
    """The dashboard takes no bodies: a compressed bomb is refused (405) or ignored, never expanded."""
    bomb = _gzip_bomb(BOMB_MIB)
    with peak_rss_growth() as growth:
        post = httpx.post(dashboard.base + "/api/meta", content=bomb, headers={"Content-Encoding": "gzip"})
        get = httpx.request("GET", dashboard.base + "/api/meta", content=bomb, headers={"Content-Encoding": "gzip"})
    assert post.status_code == 405
    assert post.json() == {"error": "the dashboard is read-only"}
    assert get.status_code == 200
    assert growth[0] < RSS_BOUND_MB


def test_otlp_grpc_compressed_oversize_message_is_refused_in_bounded_memory(sink: RecordingSink) -> None:
    """grpc enforces max_receive_message_length on the decompressed message: a 256 MiB message sent
    gzip-compressed (about 256 KiB on the wire) is refused with RESOURCE_EXHAUSTED without being expanded."""
    server = OtlpGrpcServer(cast(OtlpSink, sink), port=0).start()
    host, port = server.address
    client = textwrap.dedent(f"""
        import grpc
        size = 256 << 20
        def varint(n):
            out = bytearray()
            while True:
                low, n = n & 0x7F, n >> 7
                out.append(low | 0x80 if n else low)
                if not n:
                    return bytes(out)
        payload = b"\\x0a" + varint(size) + bytes(size)  # resource_logs: one oversized field
        call = grpc.insecure_channel("{host}:{port}").unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        try:
            call(payload, compression=grpc.Compression.Gzip, timeout=60)
            print("OK")
        except grpc.RpcError as exc:
            print(exc.code().name, exc.details())
    """)
    before = len(sink.received)
    try:
        with peak_rss_growth() as growth:
            done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("RESOURCE_EXHAUSTED"), done.stdout + done.stderr
        assert growth[0] < RSS_BOUND_MB, f"RSS grew by {growth[0]} MB"
        assert len(sink.received) == before
    finally:
        server.stop(0.5)


# --- HTTP/1.1 framing ---------------------------------------------------------------------------------


def test_otlp_http_takes_chunked_bodies(otlp_http: Target, sink: RecordingSink) -> None:
    body = _trace_request()
    gz = zlib.compress(body, wbits=16 + zlib.MAX_WBITS)

    def pieces(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 7):
            yield data[i:i + 7]

    before = len(sink.received)
    r = httpx.post(otlp_http.base + "/v1/traces", content=pieces(body),
                   headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200, r.text
    assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
    r = httpx.post(otlp_http.base + "/v1/traces", content=pieces(gz), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    got = sink.received[before:]
    assert [name for name, _ in got] == ["traces", "traces"]
    assert all(req.resource_spans[0].scope_spans[0].spans[0].name == "hostile" for _, req in got)
    # a raw chunked request, keep-alive, then a second request on the same connection
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces(body)) + b"0\r\n\r\n"
    head = b"POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    host, port = otlp_http.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for _ in range(2):
            s.sendall(head + chunked)
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer


def test_dashboard_with_a_chunked_request_body(dashboard: Target) -> None:
    r = httpx.request("GET", dashboard.base + "/api/meta", content=iter([b"a", b"b"]))
    assert r.status_code == 200
    r = httpx.post(dashboard.base + "/api/meta", content=iter([b"a", b"b"]))
    assert r.status_code == 405


def test_expect_100_continue(target: Target) -> None:
    head = (f"{target.method} {target.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(target.body)}\r\n"
            "Content-Type: application/x-protobuf\r\nExpect: 100-continue\r\n\r\n").encode()
    host, port = target.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        first = s.recv(65536)
        if target.body:  # the receiver reads bodies: it asks for this one
            assert first.startswith(b"HTTP/1.1 100 Continue\r\n"), first
            s.sendall(target.body)
            final = first.partition(b"\r\n\r\n")[2] or s.recv(65536)
        else:  # the dashboard reads none: it answers at once, as RFC 9110 allows
            final = first
        assert final.startswith(b"HTTP/1.1 200"), final


# --- CR/LF and reflection -----------------------------------------------------------------------------

_INJECTIONS = [
    "/api/panel/overview?from=1%0d%0aSet-Cookie:%20pwn=1&to=2",
    "/api/runs?workspace=%0d%0aSet-Cookie:%20pwn=1%0d%0a%0d%0a%3Cscript%3Epwn()%3C/script%3E",
    "/api/runs/x%0d%0aSet-Cookie:%20pwn=1",
    "/api/panel/%3Cscript%3Epwn()%3C%2Fscript%3E",
    "/static/%0d%0aSet-Cookie:%20pwn=1",
    "/v1/traces?x=%0d%0aSet-Cookie:%20pwn=1",
    "/%3Cscript%3Epwn()%3C/script%3E%0d%0aSet-Cookie:%20pwn=1",
]


@pytest.mark.parametrize("path", _INJECTIONS)
def test_crlf_in_parameters_never_reaches_a_header(target: Target, path: str) -> None:
    r = httpx.request(target.method, target.base + path, content=target.body)
    assert r.status_code < 500
    assert "set-cookie" not in r.headers
    assert all("pwn" not in k.lower() and "pwn" not in v for k, v in r.headers.items())
    assert "<script" not in r.text.lower()
    if target.name == "dashboard":
        assert r.headers["content-type"] == "application/json"
        assert isinstance(r.json(), (dict, list))


def test_raw_crlf_in_the_request_line_is_refused(target: Target) -> None:
    answer = _raw(target.base, b"GET /api/meta?a=1\r\nSet-Cookie: pwn=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"set-cookie" not in head and b"pwn" not in head


def test_dashboard_security_headers_and_json_errors(dashboard: Target) -> None:
    page = httpx.get(dashboard.base + "/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    for r in (page, httpx.get(dashboard.base + "/api/meta"), httpx.get(dashboard.base + "/nope"),
              httpx.delete(dashboard.base + "/api/meta"), httpx.get(dashboard.base + "/api/panel/overview?from=x")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = httpx.request(method, dashboard.base + "/api/runs")
        assert (r.status_code, r.headers["content-type"], r.headers["allow"]) == (405, "application/json", "GET, HEAD")
    for path, status in (("/nope", 404), ("/api/panel/nope", 404), ("/api/runs/nope", 404),
                         ("/api/panel/overview?from=x", 400), ("/static/..%2f..%2fserver.py", 404)):
        r = httpx.get(dashboard.base + path)
        assert (r.status_code, r.headers["content-type"]) == (status, "application/json"), path
        assert "error" in r.json()


# --- clients that hang up -----------------------------------------------------------------------------


def _hang_up(base: str, data: bytes, *, reset: bool) -> None:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    if reset:  # RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(data)
    s.close()


def test_client_disconnects_leave_no_traceback(
    dashboard: Target, otlp_http: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    partial = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 1000
    chunked = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"
    big = b"GET /static/vendor/echarts.min.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for reset in (False, True):
        _hang_up(otlp_http.base, partial, reset=reset)
        _hang_up(otlp_http.base, chunked, reset=reset)
        _hang_up(otlp_http.base, b"POST /v1/tra", reset=reset)
        for _ in range(5):
            _hang_up(dashboard.base, big, reset=reset)
    time.sleep(1.0)
    # both still serve
    assert httpx.post(otlp_http.base + otlp_http.path, content=otlp_http.body).status_code == 200
    assert httpx.get(dashboard.base + "/api/meta").status_code == 200
    noisy = [r for r in caplog.records
             if r.exc_info or r.levelno >= logging.WARNING or "Traceback" in r.getMessage()
             or "BrokenPipe" in r.getMessage() or "ConnectionReset" in r.getMessage()]
    assert not noisy, [(r.name, r.levelname, r.getMessage()) for r in noisy]
