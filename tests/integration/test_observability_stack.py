"""The embedded observability stack against a real demo: every Grafana panel, variable and alert query,
expanded as the ClickHouse plugin expands it, runs on the demo's chDB through the stack's ClickHouse HTTP
endpoint and agrees with `fleetforge demo --json`; the endpoint answers curl and clickhouse-connect,
refuses writes and binds loopback; Native results follow the client's protocol revision.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from fleetforge.adapters.devstack.native import CUSTOM_SERIALIZATION_REVISION
from fleetforge.core.panels import PanelQuery, expand

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy/otel/dashboards/observability.json").read_text())
ALERTS = yaml.safe_load((ROOT / "deploy/grafana/provisioning/alerting/fleetforge-alerts.yaml").read_text())


def fleetforge(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fleetforge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FLEETFORGE_CLICKHOUSE_URL": "", **(env or {})},
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


class Stack:
    """An embedded stack started with `observability up --detach` on ports it picks itself (0): ports chosen
    here and bound later by the stack could be taken in between. The bound ones are read from its state."""

    def __init__(self, stack_dir: Path, *extra: str) -> None:
        self.dir = stack_dir
        fleetforge(
            "observability",
            "up",
            "--mode",
            "embedded",
            "--detach",
            "--stack-dir",
            str(stack_dir),
            "--http-port",
            "0",
            "--otlp-grpc-port",
            "0",
            "--otlp-http-port",
            "0",
            "--prometheus-port",
            "0",
            *extra,
            timeout=120,
        )
        self.state = json.loads((stack_dir / "observability.json").read_text())
        bound = {k: urlsplit(v).port for k, v in self.state["addresses"].items()}
        self.ports = {"http": bound["clickhouse_http"], "grpc": bound["otlp_grpc"], "otlp_http": bound["otlp_http"],
                      "prom": bound["prometheus"]}
        self.url = f"http://127.0.0.1:{self.ports['http']}/"

    def query(self, sql: str, fmt: str = "JSONCompact", **params: str) -> httpx.Response:
        return httpx.post(
            self.url, content=sql.encode(), params={"default_format": fmt, **params}, timeout=60
        )

    def rows(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        resp = self.query(sql)
        assert resp.status_code == 200, f"{resp.text}\n--- query ---\n{sql}"
        doc = resp.json()
        return [c["name"] for c in doc["meta"]], doc["data"]

    def down(self) -> None:
        fleetforge("observability", "down", "--mode", "embedded", "--stack-dir", str(self.dir), check=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Stack]]:
    data_dir = tmp_path_factory.mktemp("obs") / "ff"
    summary = json.loads(
        fleetforge(
            "demo",
            "--no-serve",
            "--json",
            "--data-dir",
            str(data_dir),
            "--runs",
            "30",
            "--seed",
            "5",
            env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"},
        ).stdout
    )
    # --stack-dir = the demo's data dir: the stack serves the very chDB the demo loaded.
    stack = Stack(data_dir, "--no-sink")
    yield summary, stack
    stack.down()


def _query_context(stack: Stack) -> PanelQuery:
    _, rows = stack.rows("SELECT groupUniqArray(workspace), groupUniqArray(app) FROM telemetry.run_events")
    now = int(time.time())
    return PanelQuery(now - 6 * 3600, now + 120, 60, {"workspace": rows[0][0], "app": rows[0][1]})


def _panel_results(stack: Stack) -> dict[str, tuple[list[str], list[list[Any]]]]:
    ctx = _query_context(stack)
    results = {}
    for panel in DASHBOARD["panels"]:
        (target,) = panel["targets"]
        results[panel["title"]] = stack.rows(expand(target["rawSql"], ctx))
    return results


def test_every_panel_query_returns_rows_and_agrees_with_the_demo(demo: tuple[dict[str, Any], Stack]) -> None:
    summary, stack = demo
    res = _panel_results(stack)
    for title, (_, rows) in res.items():
        assert rows, f"panel {title!r} returned no rows"

    cols, rows = res["Fleet overview"]
    overview = dict(zip(cols, rows[0], strict=True))
    runs = summary["runs"]
    assert int(overview["runs"]) == runs["total"]
    assert overview["success_rate"] == pytest.approx(runs["by_status"].get("succeeded", 0) / runs["total"])
    assert int(overview["attempts"]) == summary["steps"]["attempts"]
    assert int(overview["retries"]) == summary["steps"]["retries"]
    assert int(overview["tokens_used"]) == summary["budget"]["tokens_used"]
    assert overview["cost_used"] == pytest.approx(summary["budget"]["cost_used"])
    assert int(overview["denies"]) == summary["policy_decisions"]["by_effect"].get("deny", 0)

    cols, rows = res["Run success SLO"]
    assert cols == ["time", "success_rate", "slo_rate"] and all(0 <= r[1] <= 1 for r in rows)
    cols, rows = res["Step attempts over time"]
    by_attempt = [sum(int(r[i]) for r in rows) for i in range(1, len(cols))]
    assert sum(by_attempt) == summary["steps"]["attempts"]
    assert sum(by_attempt[1:]) == summary["steps"]["retries"]

    cols, rows = res["Step retry heatmap"]
    assert sum(int(r[cols.index("steps")]) for r in rows) == summary["steps"]["attempts"]

    cols, rows = res["Policy violation bursts"]
    effects: dict[str, int] = {}
    for r in rows:
        effects[r[cols.index("effect")]] = effects.get(r[cols.index("effect")], 0) + int(
            r[cols.index("decisions")]
        )
    assert effects == {k: v for k, v in summary["policy_decisions"]["by_effect"].items() if v}

    cols, rows = res["Projected budget exhaustion"]
    got = {(r[0], r[1]): int(r[cols.index("tokens_used")]) for r in rows}
    want = {
        (b["workspace"], b["app"]): b["tokens_used"]
        for b in summary["budget"]["by_workspace_app"]
        if b["tokens_used"] or b["tokens_reserved"]
    }
    assert {k: v for k, v in got.items() if k in want} == want

    cols, rows = res["Tool flake rates"]
    assert sum(int(r[cols.index("calls")]) for r in rows) == summary["tool_calls"]["total"]
    assert sum(int(r[cols.index("failures")]) for r in rows) == summary["tool_calls"]["failed"]


def test_panels_name_only_columns_their_queries_return(demo: tuple[dict[str, Any], Stack]) -> None:
    """Overrides, transformations and units refer to real result columns (ClickHouse itself rejects a
    query naming a column its tables lack, so a stale panel fails the test above or this one)."""
    _, stack = demo
    res = _panel_results(stack)
    for panel in DASHBOARD["panels"]:
        cols, _ = res[panel["title"]]
        for override in panel["fieldConfig"]["overrides"]:
            if override["matcher"]["id"] == "byName":
                assert override["matcher"]["options"] in cols, (panel["title"], override["matcher"], cols)
        for tr in panel["transformations"]:
            if tr["id"] == "groupingToMatrix":
                for key in ("columnField", "rowField", "valueField"):
                    assert tr["options"][key] in cols, (panel["title"], tr)
        if panel["targets"][0]["format"] == 0:  # time series need the DateTime column `time`
            assert cols[0] == "time", panel["title"]


def test_template_variables_list_the_demo_workspaces_and_apps(demo: tuple[dict[str, Any], Stack]) -> None:
    summary, stack = demo
    ctx = _query_context(stack)
    found = {}
    for var in DASHBOARD["templating"]["list"]:
        _, rows = stack.rows(expand(var["query"], ctx))
        found[var["name"]] = {r[0] for r in rows}
    pairs = summary["budget"]["by_workspace_app"]
    assert found == {"workspace": {p["workspace"] for p in pairs}, "app": {p["app"] for p in pairs}}


def test_alert_queries_run_and_return_their_value_column(demo: tuple[dict[str, Any], Stack]) -> None:
    summary, stack = demo
    ctx = _query_context(stack)
    for rule in ALERTS["groups"][0]["rules"]:
        model = rule["data"][0]["model"]
        cols, rows = stack.rows(expand(model["rawSql"], ctx))
        assert rule["labels"]["value_column"] in cols, rule["title"]
        if rule["uid"] == "fleetforge-run-success-slo":
            assert len(rows) == len(summary["budget"]["by_workspace_app"])  # 30 runs: every app has >= 5
            total = sum(r[2] for r in rows) / len(rows)
            assert 0 < total <= 1
        if rule["uid"] == "fleetforge-tool-flake-slo":
            assert rows and all(0 <= r[2] <= 1 for r in rows)


# -- the endpoint -----------------------------------------------------------------------------------


def test_curl_and_http_interface_basics(demo: tuple[dict[str, Any], Stack]) -> None:
    summary, stack = demo
    curl = shutil.which("curl")
    if curl:
        out = subprocess.run(
            [
                curl,
                "-sS",
                f"{stack.url}?query=SELECT+count()+FROM+telemetry.run_events+"
                "WHERE+kind+IN+('run_succeeded','run_failed','run_canceled')",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert out == f"{summary['runs']['total']}\n"
    assert httpx.get(stack.url + "ping").text == "Ok.\n"
    assert httpx.get(stack.url, params={"query": "SELECT {n:UInt8} + 1", "param_n": "41"}).text == "42\n"
    body = httpx.post(stack.url, content=b"SELECT 1 AS one FORMAT JSONEachRow").text
    assert body == '{"one":1}\n'
    resp = stack.query("SELECT nope", "TabSeparated")
    assert resp.status_code == 400 and resp.headers["X-ClickHouse-Exception-Code"] == "47"


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE telemetry.run_events",
        "INSERT INTO telemetry.run_events (event_id) VALUES ('x')",
        "CREATE TABLE telemetry.evil (a Int8) ENGINE = Memory",
        "ALTER TABLE telemetry.run_events DELETE WHERE 1",
        "TRUNCATE TABLE telemetry.run_events",
        "SELECT 1; DROP TABLE telemetry.run_events",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "INSERT INTO FUNCTION file('/tmp/fleetforge-evil.csv', 'CSV', 'a Int8') VALUES (1)",
    ],
)
def test_writes_are_refused(demo: tuple[dict[str, Any], Stack], statement: str) -> None:
    _, stack = demo
    resp = stack.query(statement, "TabSeparated")
    assert resp.status_code in (400, 403), resp.text
    assert resp.headers["X-ClickHouse-Exception-Code"] in ("164", "62", "497"), resp.text
    assert stack.query("SELECT count() FROM telemetry.run_events", "TabSeparated").status_code == 200
    assert not Path("/tmp/fleetforge-evil.csv").exists()


def test_binds_loopback_by_default(demo: tuple[dict[str, Any], Stack]) -> None:
    _, stack = demo
    for url in stack.state["addresses"].values():
        assert url.startswith("http://127.0.0.1:"), url
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent, this only picks an interface
            own = probe.getsockname()[0]
        except OSError:
            own = "127.0.0.1"
    if not own.startswith("127."):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{own}:{stack.ports['http']}/ping", timeout=3)


def test_clickhouse_connect_reads_the_endpoint(demo: tuple[dict[str, Any], Stack]) -> None:
    import clickhouse_connect

    summary, stack = demo
    client = clickhouse_connect.get_client(host="127.0.0.1", port=stack.ports["http"])
    assert client.protocol_version == 54405  # it probed client_protocol_version and checked the answer
    rows = client.query(
        "SELECT status, sum(runs) FROM telemetry.run_latency_metrics WHERE status != '' GROUP BY status"
    ).result_rows
    assert {s: int(n) for s, n in rows} == summary["runs"]["by_status"]
    typed = client.query(
        "SELECT workspace, [toLowCardinality(app)] AS apps, map(kind, attempt) AS m, "
        "toDecimal64(cost_usd, 6) AS cost, occurred_at, nullIf(tool, '') AS tool "
        "FROM telemetry.step_events ORDER BY occurred_at LIMIT 50"
    ).result_rows
    assert len(typed) == 50 and all(isinstance(r[1], list) and isinstance(r[2], dict) for r in typed)
    with pytest.raises(Exception, match="read-only"):
        client.command("CREATE TABLE telemetry.nope (a Int8) ENGINE = Memory")
    client.close()


def _columns_at_revision(data: bytes, revision: int, lengths: list[int]) -> list[tuple[str, str, int]]:
    """An independent reader: (name, type, custom byte) of one block, given each column's data length."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def string() -> str:
        nonlocal pos
        n = varuint()
        pos += n
        return data[pos - n : pos].decode()

    assert data[:8] == b"\x01\x00\x02\xff\xff\xff\xff\x00"  # BlockInfo
    pos = 8
    ncols, _ = varuint(), varuint()
    out = []
    for i in range(ncols):
        name, ctype = string(), string()
        custom = data[pos] if revision >= CUSTOM_SERIALIZATION_REVISION else -1
        pos += 1 if revision >= CUSTOM_SERIALIZATION_REVISION else 0
        pos += lengths[i]
        out.append((name, ctype, custom))
    assert pos == len(data)
    return out


def test_native_results_follow_the_client_protocol_revision(demo: tuple[dict[str, Any], Stack]) -> None:
    """What clickhouse-go (Grafana's plugin) asks for: client_protocol_version above 54454 adds BlockInfo
    and a custom-serialization byte per column; the data must stay where the client expects it."""
    _, stack = demo
    columns = {
        "n": "number",
        "s": "toString(number)",
        "lc": "toLowCardinality(toString(number % 3))",
        "alc": "[toLowCardinality('a'), toLowCardinality('b')]",
        "m": "map('k', number)",
        "t": "(number, 'x')",
        "d": "toDecimal128(number, 6)",
        "ts": "toDateTime64('2026-01-01 00:00:00', 9, 'UTC')",
        "nl": "if(number % 2 = 0, NULL, number)",
        "lcn": "CAST(NULL, 'LowCardinality(Nullable(String))')",
        "aa": "[[1, 2], [3]]",
        "sa": "CAST(number, 'SimpleAggregateFunction(sum, UInt64)')",
    }
    select = ", ".join(f"{expr} AS {name}" for name, expr in columns.items())
    lengths = []
    for name, expr in columns.items():  # each column's data length, as ClickHouse writes it alone
        alone = stack.query(f"SELECT {expr} AS {name} FROM numbers(5)", "Native").content
        pos = 2  # 1 column, 5 rows (one byte each)
        pos += 1 + alone[pos]  # name
        pos += 1 + alone[pos]  # type
        lengths.append(len(alone) - pos)
    for revision in (54405, 54460, 54470):
        data = stack.query(
            f"SELECT {select} FROM numbers(5)", "Native", client_protocol_version=str(revision)
        ).content
        found = _columns_at_revision(data, revision, lengths)
        assert [f[0] for f in found] == list(columns)
        assert all(custom in (0, -1) for _, _, custom in found)
    assert struct.unpack("<B", stack.query("SELECT 1 AS check", "Native").content[:1])[0] == 1  # revision 0


def test_allow_writes_lets_writes_through(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "w", "--no-sink", "--allow-writes")
    try:
        assert (
            stack.query("CREATE TABLE telemetry.scratch (a Int8) ENGINE = Memory", "TabSeparated").status_code
            == 200
        )
        assert stack.query("INSERT INTO telemetry.scratch VALUES (7)", "TabSeparated").status_code == 200
        assert stack.query("SELECT a FROM telemetry.scratch", "TabSeparated").text == "7\n"
    finally:
        stack.down()
    assert (
        fleetforge(
            "observability", "status", "--mode", "embedded", "--stack-dir", str(tmp_path / "w"), check=False
        ).returncode
        == 3
    )
