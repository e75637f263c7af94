"""Hostile requests against the running embedded ClickHouse endpoint (`observability up --detach`).

Every request is refused with a 4xx naming the problem; nothing is written on disk (the targets stay absent,
the data dir gains no file beyond the engine's own), no outbound connection reaches the local listener the
requests point at, a gzip bomb leaves the serving process's memory bounded, and disconnected clients free
their query slots.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.test_observability_stack import Stack

pytestmark = pytest.mark.timeout(300)


class Listener:
    """A local TCP listener recording every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@dataclass
class Env:
    stack: Stack
    listener: Listener
    targets: Path  # files the attacks try to create live here
    pid: int = 0
    files_before: set[str] = field(default_factory=set)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("hostile")
    stack = Stack(root / "stack", "--no-sink", "--query-timeout", "20")
    listener = Listener()
    targets = root / "targets"
    targets.mkdir()
    e = Env(stack, listener, targets, int(stack.state["pid"]))
    e.files_before = _files(stack.dir / "clickhouse")
    yield e
    stack.down()
    listener.close()


@dataclass(frozen=True)
class Case:
    name: str
    sql: str = ""  # {out} = a target file, {port} = the listener's port
    params: tuple[tuple[str, str], ...] = ()
    method: str = "POST"
    status: tuple[int, ...] = (403,)
    says: str = ""  # the error message names the problem with this (case-insensitive)
    headers: tuple[tuple[str, str], ...] = ()


OUT = "SELECT 'x' INTO OUTFILE '{out}'"
CASES = [
    Case("outfile-post", OUT, says="INTO OUTFILE"),
    Case("outfile-get", OUT, method="GET", says="INTO OUTFILE"),
    Case("outfile-lowercase", "select 'x' into outfile '{out}'", says="INTO OUTFILE"),
    Case("outfile-comments", "/* a */ SeLeCt 'x' /* ; */ InTo /* b */ OutFile '{out}'", says="INTO OUTFILE"),
    Case("outfile-dash-comment", "SELECT 'x' -- note\nINTO OUTFILE '{out}' TRUNCATE", says="INTO OUTFILE"),
    Case("outfile-compression", "SELECT 'x' INTO OUTFILE '{out}' COMPRESSION 'gzip'", says="INTO OUTFILE"),
    Case("outfile-show", "SHOW TABLES FROM telemetry INTO OUTFILE '{out}'", says="INTO OUTFILE"),
    Case("file-table-function", "SELECT * FROM file('/etc/hostname', 'LineAsString')", says="file()"),
    Case("file-case-trick", "SELECT * FROM FiLe('/etc/hostname', 'LineAsString')", says="file()"),
    Case("file-get", "SELECT * FROM file('/etc/passwd')", method="GET", says="file()"),
    Case("describe-file", "DESCRIBE file('/etc/hostname')", says="file()"),
    Case("file-scalar", "SELECT file('/etc/hostname')", says="file()"),
    Case("file-in-subquery", "SELECT 1 WHERE 1 IN (SELECT count() FROM file('/etc/passwd'))", says="file()"),
    Case("explain-file", "EXPLAIN SYNTAX SELECT * FROM file('/etc/passwd')", says="file()"),
    Case("url", "SELECT * FROM url('http://127.0.0.1:{port}/x', 'CSV', 'a String')", says="url()"),
    Case("describe-url", "DESCRIBE url('http://127.0.0.1:{port}/x', 'CSV')", says="url()"),
    Case("describe-url-get", "DESC url('http://127.0.0.1:{port}/x')", method="GET", says="url()"),
    Case("s3", "SELECT * FROM s3('http://127.0.0.1:{port}/b/k.csv', 'CSV', 'a String')", says="s3()"),
    Case("remote", "SELECT * FROM remote('127.0.0.1:{port}', system.one)", says="remote()"),
    Case("remote-secure", "SELECT * FROM remoteSecure('127.0.0.1:{port}', system.one)", says="remoteSecure()"),
    Case("mysql", "SELECT * FROM mysql('127.0.0.1:{port}', 'd', 't', 'u', 'p')", says="mysql()"),
    Case("postgresql", "SELECT * FROM postgresql('127.0.0.1:{port}', 'd', 't', 'u', 'p')", says="postgresql()"),
    Case("executable", "SELECT * FROM executable('id', 'TSV', 'x String')", says="executable()"),
    Case("input", "SELECT * FROM input('x String')", says="input()"),
    Case("cluster", "SELECT * FROM cluster('default', system.one)", says="cluster()"),
    Case("merge", "SELECT * FROM merge('telemetry', '.*')", says="merge()"),
    Case("insert-function-file", "INSERT INTO FUNCTION file('{out}', 'CSV', 'a Int8') VALUES (1)", says="read-only"),
    Case("create", "CREATE TABLE telemetry.evil (a Int8) ENGINE = Memory", says="read-only"),
    Case("drop", "DROP TABLE telemetry.step_events", says="read-only"),
    Case("system-flush", "SYSTEM FLUSH LOGS", says="read-only"),
    Case("system-shutdown", "sYsTeM SHUTDOWN", says="read-only"),
    Case("kill", "KILL QUERY WHERE 1", says="read-only"),
    Case("set", "SET readonly = 0", says="SET is not allowed"),
    Case("multi-statement", "SELECT 1; SELECT 2", status=(400,), says="Multi-statements"),
    Case("multi-statement-write", "SELECT 1; " + OUT, status=(400,), says="Multi-statements"),
    Case("settings-clause", "SELECT 1 SETTINGS max_execution_time = 100000", says="readonly"),
    Case("settings-clause-sleep", "SELECT 1 SETTINGS function_sleep_max_microseconds_per_block = 0", says="readonly"),
    Case("url-format-template-row", "SELECT 1 AS x FORMAT Template", (("format_template_row", "/etc/hostname"),),
         says="format_template_row"),
    Case("url-format-schema", "SELECT 1", (("format_schema", "/etc/hostname:X"),), says="format_schema"),
    Case("url-output-format-schema", "SELECT 1 FORMAT CapnProto", (("output_format_schema", "{out}"),),
         says="output_format_schema"),
    Case("url-schema-registry", "SELECT 1 FORMAT AvroConfluent",
         (("format_avro_schema_registry_url", "http://127.0.0.1:{port}"),), says="format_avro_schema_registry_url"),
    Case("url-readonly-0", "SELECT 1", (("readonly", "0"),), says="read-only"),
    Case("url-negative-limit", "SELECT 1", (("max_result_rows", "-1"),), status=(400,), says="negative"),
    Case("url-sleep-setting", "SELECT 1", (("function_sleep_max_microseconds_per_block", "0"),),
         says="not allowed"),
    Case("url-log-comment", "SELECT 1", (("log_comment", "fleetforge-http-x"),), says="not allowed"),
    Case("system-zookeeper", "SELECT * FROM system.zookeeper WHERE path = '/'", says="system.zookeeper"),
    Case("system-users", "SELECT * FROM system.users", says="system.users"),
    Case("other-database", "SELECT 1", (("database", "secret"),), says="not readable"),
    Case("identifier-newline", "SELECT 1 AS `a\n     Function file`", status=(400,), says="line break"),
    Case("crlf-query-id", "SELECT 1", (("query_id", "abc\r\nSet-Cookie: pwn=1"),), status=(400,), says="query_id"),
    Case("crlf-query-id-get", "SELECT 1", (("query_id", "a\nb"),), method="GET", status=(400,), says="query_id"),
    Case("long-query-id", "SELECT 1", (("query_id", "q" * 129),), status=(400,), says="query_id"),
    Case("crlf-session-id", "SELECT 1", (("session_id", "s\r\nX-Evil: 1"),), status=(400,), says="session_id"),
    Case("crlf-database", "SELECT 1", (("database", "telemetry\r\nX-Evil: 1"),), status=(400,), says="Database"),
    Case("crlf-default-format", "SELECT 1", (("default_format", "JSON\r\nX-Evil: 1"),), status=(400,),
         says="format"),
    Case("crlf-setting-value", "SELECT 1", (("format_csv_delimiter", "\r\nX-Evil: 1"),), status=(400,),
         says="control character"),
    Case("compress-native", "SELECT 1", (("compress", "1"),), status=(400,), says="compress=1"),
    Case("bad-host", "SELECT 1", headers=(("Host", "evil.example:8123"),), status=(421,), says="not allowed"),
    Case("unknown-encoding", "SELECT 1", headers=(("Content-Encoding", "br"),), status=(400,), says="br"),
]


def _fill(text: str, env: Env, name: str) -> str:
    return text.replace("{out}", str(env.targets / f"{name}.out")).replace("{port}", str(env.listener.port))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_refused(env: Env, case: Case) -> None:
    sql = _fill(case.sql, env, case.name)
    params = {k: _fill(v, env, case.name) for k, v in case.params}
    headers = dict(case.headers)
    if case.method == "GET":
        resp = httpx.get(env.stack.url, params={"query": sql, **params}, headers=headers, timeout=30)
    else:
        body = sql.encode()
        if headers.get("Content-Encoding") == "br":
            body = b"\x00\x01\x02"
        resp = httpx.post(env.stack.url, params=params, content=body, headers=headers, timeout=30)
    assert resp.status_code in case.status, (resp.status_code, resp.text)
    assert case.says.lower() in resp.text.lower(), resp.text
    assert "set-cookie" not in resp.headers and "x-evil" not in resp.headers
    assert not list(env.targets.iterdir()), list(env.targets.iterdir())
    assert env.listener.connections == 0


def test_chunked_bodies_are_read_and_judged(env: Env) -> None:
    def chunks(text: str) -> Iterator[bytes]:
        data = text.encode()
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    out = env.targets / "chunked.out"
    resp = httpx.post(env.stack.url, content=chunks(f"SELECT 'x' INTO OUTFILE '{out}'"), timeout=30)
    assert resp.status_code == 403 and "INTO OUTFILE" in resp.text
    resp = httpx.post(env.stack.url, content=chunks("SELECT count() FROM telemetry.step_events"), timeout=30)
    assert resp.status_code == 200 and resp.text == "0\n"
    assert not out.exists()


def test_parameter_values_are_data_never_headers(env: Env) -> None:
    """A query parameter is TSV-escaped data (as ClickHouse reads it); raw CR/LF fail to parse, escaped ones are
    the value; neither reaches a header."""
    sql = b"SELECT {p:String} AS p FORMAT JSONEachRow"
    raw = httpx.post(env.stack.url, params={"param_p": "a\r\nSet-Cookie: pwn=1"}, content=sql, timeout=30)
    assert raw.status_code == 400 and "set-cookie" not in raw.headers
    escaped = httpx.post(env.stack.url, params={"param_p": "a\\r\\nSet-Cookie: pwn=1"}, content=sql, timeout=30)
    assert escaped.status_code == 200 and "set-cookie" not in escaped.headers
    assert escaped.json() == {"p": "a\r\nSet-Cookie: pwn=1"}


def test_bodies_are_bounded_on_the_wire_and_decompressed(env: Env) -> None:
    before = _rss_kib(env.pid)
    big = b"SELECT 1 -- " + b"x" * (17 * 1024 * 1024)
    resp = httpx.post(env.stack.url, content=big, timeout=60)
    assert resp.status_code == 413 and "limit" in resp.text
    # the finding's bomb: ~400 MiB of one byte, gzip-compressed to a few hundred KB
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"a" * (1024 * 1024)
    bomb = b"".join(compressor.compress(block) for _ in range(400)) + compressor.flush()
    assert len(bomb) < 1024 * 1024
    for encoding, payload in (("gzip", bomb), ("deflate", zlib.compress(b"a" * (64 * 1024 * 1024), 9))):
        resp = httpx.post(env.stack.url, content=payload, headers={"Content-Encoding": encoding}, timeout=60)
        assert resp.status_code == 413 and "once decompressed" in resp.text, resp.text
    grown_mib = (_rss_kib(env.pid) - before) / 1024
    assert grown_mib < 200, f"the serving process grew by {grown_mib:.0f} MiB"


def test_limits_apply_by_default_and_may_only_be_lowered(env: Env) -> None:
    resp = httpx.post(env.stack.url, content=b"SELECT getSetting('max_execution_time')", timeout=30)
    assert resp.text.strip() == "20"
    for higher in ("100000", "0"):  # asking for more (or for none) gets the endpoint's limit
        resp = httpx.post(env.stack.url, params={"max_execution_time": higher},
                          content=b"SELECT getSetting('max_execution_time')", timeout=30)
        assert resp.text.strip() == "20", resp.text
    resp = httpx.post(
        env.stack.url,
        params={"max_execution_time": "1", "max_block_size": "1"},
        content=b"SELECT sleepEachRow(1) FROM numbers(10)",
        timeout=30,
    )
    assert resp.status_code in (408, 500) and "TIMEOUT_EXCEEDED" in resp.text, resp.text


def _slow_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    body = b"SELECT sleepEachRow(1) FROM numbers(40)"
    sock.sendall(
        b"POST /?max_block_size=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    return sock


def test_disconnected_clients_free_their_slots(env: Env) -> None:
    socks = [_slow_request(env.stack.ports["http"]) for _ in range(4)]
    time.sleep(1.0)  # all four slots busy with 20 s queries
    for s in socks:
        s.close()
    started = time.monotonic()
    resp = httpx.post(env.stack.url, content=b"SELECT 42", timeout=30)
    assert resp.text == "42\n" and time.monotonic() - started < 8
    log = (env.stack.dir / "observability.log").read_text(errors="replace")
    assert "Traceback" not in log and "BrokenPipe" not in log, log[-2000:]


def test_nothing_was_written(env: Env) -> None:
    assert not list(env.targets.iterdir())
    assert env.listener.connections == 0
    new = _files(env.stack.dir / "clickhouse") - env.files_before
    # the engine's own bookkeeping only: its status/uuid files, tmp files, part files of its own tables
    strange = [f for f in new if not f.startswith(("store/", "data/", "metadata/", "tmp", "status", "uuid"))]
    assert not strange, strange
    assert not any(".out" in f or "victim" in f for f in new), new


def test_status_and_ping_need_no_credentials(tmp_path: Path) -> None:
    from tests.integration.test_observability_stack import fleetforge

    env_pw = {"FLEETFORGE_CLICKHOUSE_PASSWORD": "s3cret"}
    os.environ.update(env_pw)
    try:
        stack = Stack(tmp_path / "pw", "--no-sink")  # --detach: returns only once the readiness probe passed
    finally:
        os.environ.pop("FLEETFORGE_CLICKHOUSE_PASSWORD")
    try:
        assert httpx.get(stack.url + "ping").text == "Ok.\n"
        assert httpx.post(stack.url, content=b"SELECT 1").status_code == 401
        out = tmp_path / "pw.out"
        resp = httpx.post(stack.url, content=f"SELECT 1 INTO OUTFILE '{out}'".encode(), auth=("default", "s3cret"))
        assert resp.status_code == 403 and not out.exists()
        assert httpx.post(stack.url, content=b"SELECT 1", auth=("default", "s3cret")).text == "1\n"
        done = fleetforge("observability", "status", "--mode", "embedded", "--stack-dir", str(stack.dir))
        assert "answering" in done.stdout and "NOT answering" not in done.stdout
    finally:
        stack.down()
