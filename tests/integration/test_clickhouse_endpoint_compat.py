"""The endpoint answers the official ClickHouse clients as ClickHouse does: every panel query of both
dashboards (the built-in dashboard's panel SQL files and Grafana's dashboard, macros expanded as the Grafana
plugin expands them) returns through clickhouse-connect (Native), the ClickHouse JS client (JSONCompact, gzip
responses) and a chunked HTTP/1.1 body (httpx) the same rows as `fleetforge sql` on the same data.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetforge.core.panels import PanelQuery, expand
from tests.integration.test_observability_stack import ROOT, Stack, fleetforge
from tests.support import need

pytestmark = pytest.mark.timeout(600)

CHJS = Path(__file__).parent / "chjs"
DASHBOARD = json.loads((ROOT / "deploy/otel/dashboards/observability.json").read_text())
PANEL_FILES = sorted((ROOT / "deploy/otel/dashboards/panels").glob("*.sql"))


def norm(value: Any) -> Any:
    """One comparable form for a value whether it came from JSON text or a Native column."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): norm(v) for k, v in value.items()}
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | Decimal | str):
        try:
            number = float(value)
        except ValueError:
            return value
        return None if math.isnan(number) else float(f"{number:.6g}")  # Float32 columns: 6 digits
    return value


def rows(data: list[Any]) -> list[Any]:
    return [norm(list(r)) for r in data]


@pytest.fixture(scope="module")
def queries_and_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Stack, dict]]:
    data_dir = tmp_path_factory.mktemp("compat") / "ff"
    fleetforge("demo", "--no-serve", "--json", "--data-dir", str(data_dir), "--runs", "20", "--seed", "3",
               env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})

    def cli(sql: str) -> list[Any]:
        out = fleetforge("sql", "--data-dir", str(data_dir), "--format", "JSONCompact", "--", sql).stdout
        return list(json.loads(out)["data"])

    pairs = cli("SELECT groupUniqArray(workspace), groupUniqArray(app) FROM telemetry.run_events")[0]
    ctx = PanelQuery(1_600_000_000, 2_000_000_000, 60, {"workspace": pairs[0], "app": pairs[1]})
    queries = {f"builtin:{p.stem}": expand(p.read_text(), ctx) for p in PANEL_FILES}
    for panel in DASHBOARD["panels"]:
        queries[f"grafana:{panel['title']}"] = expand(panel["targets"][0]["rawSql"], ctx)
    for var in DASHBOARD["templating"]["list"]:
        queries[f"grafana-variable:{var['name']}"] = expand(var["query"], ctx)
    expected = {name: rows(cli(sql)) for name, sql in queries.items()}  # before the stack owns the data dir
    stack = Stack(data_dir, "--no-sink")
    yield queries, stack, expected
    stack.down()


def test_every_panel_query_has_rows(queries_and_stack: tuple[dict[str, str], Stack, dict]) -> None:
    queries, _, expected = queries_and_stack
    assert len(queries) >= 2 * len(PANEL_FILES)
    assert all(expected[name] for name in queries if not name.startswith("grafana-variable")), expected


def test_clickhouse_connect_returns_what_fleetforge_sql_returns(
    queries_and_stack: tuple[dict[str, str], Stack, dict],
) -> None:
    import clickhouse_connect

    queries, stack, expected = queries_and_stack
    client = clickhouse_connect.get_client(host="127.0.0.1", port=stack.ports["http"])
    try:
        for name, sql in queries.items():
            assert rows(client.query(sql).result_rows) == expected[name], name
    finally:
        client.close()


def test_the_clickhouse_js_client_returns_what_fleetforge_sql_returns(
    queries_and_stack: tuple[dict[str, str], Stack, dict],
) -> None:
    node = shutil.which("node")
    need(node is not None and (CHJS / "node_modules/@clickhouse/client").is_dir(),
         "node and tests/integration/chjs/node_modules (scripts/test runs `npm ci` there)")
    assert node is not None
    queries, stack, expected = queries_and_stack
    names = list(queries)
    done = subprocess.run(
        [node, str(CHJS / "query.mjs")],
        input=json.dumps({"url": stack.url.rstrip("/"), "queries": [queries[n] for n in names]}),
        capture_output=True, text=True, timeout=120, cwd=CHJS,
    )
    assert done.returncode == 0, done.stderr
    for name, result in zip(names, json.loads(done.stdout), strict=True):
        assert "error" not in result, (name, result)
        assert rows(result["data"]) == expected[name], name


def test_a_chunked_body_returns_what_fleetforge_sql_returns(
    queries_and_stack: tuple[dict[str, str], Stack, dict],
) -> None:
    queries, stack, expected = queries_and_stack

    def chunks(sql: str) -> Iterator[bytes]:
        data = sql.encode()
        yield from (data[i : i + 100] for i in range(0, len(data), 100))

    with httpx.Client(timeout=60) as http:  # one keep-alive connection for every query
        for name, sql in queries.items():
            resp = http.post(stack.url, params={"default_format": "JSONCompact"}, content=chunks(sql))
            assert resp.status_code == 200 and resp.request.headers.get("transfer-encoding") == "chunked", resp.text
            assert rows(resp.json()["data"]) == expected[name], name
            gz = http.post(stack.url, params={"default_format": "JSONCompact", "enable_http_compression": "1"},
                           content=sql.encode(), headers={"Accept-Encoding": "gzip"})
            assert gz.headers.get("content-encoding") == "gzip" and rows(gz.json()["data"]) == expected[name]
