"""The committed Grafana files are what the generator makes from the SQL files, and they reference real
UIDs, panel files and variables. (That every query runs and names real columns is checked on a demo's
chDB in tests/integration/test_observability_stack.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetforge.adapters.views.grafana.contents import (
    DASHBOARD_TITLE,
    DASHBOARD_UID,
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    PANELS,
    RULES,
    WRAPPERS,
)
from tests.support import need

ROOT = Path(__file__).resolve().parents[2]
PANEL_DIR = ROOT / "deploy/otel/dashboards/panels"
PROVISIONING = ROOT / "deploy/grafana/provisioning"
DASHBOARD_JSON = Path("deploy/otel/dashboards/observability.json")
ALERTS_YAML = Path("deploy/grafana/provisioning/alerting/fleetforge-alerts.yaml")


def _generator() -> Any:
    try:
        from fleetforge.adapters.views.grafana import generate
    except ImportError:
        need(False, "grafana-foundation-sdk (the dev extras) for the dashboard generator")
    return generate


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / DASHBOARD_JSON).read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / ALERTS_YAML).read_text(encoding="utf-8"))
    return doc


def test_committed_files_equal_the_generators_output() -> None:
    generate = _generator()
    assert {str(p) for p in generate.render(ROOT)} == {str(DASHBOARD_JSON), str(ALERTS_YAML)}
    render, main = generate.render, generate.main
    for rel, text in render(ROOT).items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, (
            f"{rel} is stale: run scripts/gen_grafana_dashboard.py"
        )
    assert main(["--root", str(ROOT), "--check"]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    main = _generator().main
    for rel in ("deploy/otel/dashboards/panels", "deploy/otel/dashboards/variables", "deploy/grafana/alerts"):
        (tmp_path / rel).mkdir(parents=True)
        for f in (ROOT / rel).glob("*.sql"):
            (tmp_path / rel / f.name).write_text(f.read_text())
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0


def test_dashboard_identity_and_datasource(board: dict[str, Any]) -> None:
    assert board["title"] == DASHBOARD_TITLE == "FleetForge Observability"
    assert board["uid"] == DASHBOARD_UID
    refs = [p["datasource"] for p in board["panels"]] + [
        t["datasource"] for p in board["panels"] for t in p["targets"]
    ]
    refs += [v["datasource"] for v in board["templating"]["list"]]
    assert refs and all(r == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID} for r in refs)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_embeds_its_panel_file_verbatim(board: dict[str, Any]) -> None:
    assert len(board["panels"]) == len(PANELS)
    for panel, spec in zip(board["panels"], PANELS, strict=True):
        assert panel["title"] == spec.title
        (target,) = panel["targets"]
        text = (PANEL_DIR / f"{spec.source}.sql").read_text(encoding="utf-8").strip()
        assert text in target["rawSql"], spec.title
        assert target["rawSql"] == WRAPPERS[spec.wrapper].format(sql=text)
        assert target["editorType"] == "sql" and target["refId"] == "A"
        assert (target["format"], target["queryType"]) in ((0, "timeseries"), (1, "table"))
        assert "FROM telemetry." in target["rawSql"]


def test_every_shared_panel_file_is_on_the_dashboard() -> None:
    used = {spec.source for spec in PANELS}
    assert used == {p.stem for p in PANEL_DIR.glob("*.sql")}


def test_guide_panels_are_there(board: dict[str, Any]) -> None:
    kinds = {p["title"]: p["type"] for p in board["panels"]}
    assert kinds["Run success SLO"] == "timeseries" and kinds["Run MTTR"] == "timeseries"
    assert kinds["Step retry heatmap"] == "table" and kinds["Step attempts over time"] == "heatmap"
    assert kinds["Budget burn-down"] == "timeseries" and kinds["Projected budget exhaustion"] == "table"
    assert kinds["Policy violation bursts"] == "timeseries" and kinds["Tool flake rates"] == "table"


def test_template_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"workspace", "app"}
    for name, var in variables.items():
        assert var["type"] == "query" and var["multi"] and var["includeAll"]
        sql = (ROOT / f"deploy/otel/dashboards/variables/{name}.sql").read_text(encoding="utf-8").strip()
        assert var["query"] == sql and "FROM telemetry.run_events" in sql
    used = {
        m for p in board["panels"] for m in re.findall(r"\$\{(\w+):singlequote\}", p["targets"][0]["rawSql"])
    }
    assert used == {"workspace", "app"}


def test_datasource_provisioning() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources/clickhouse.yaml").read_text(encoding="utf-8"))
    (ds,) = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == DATASOURCE_TYPE == "grafana-clickhouse-datasource"
    assert ds["jsonData"]["protocol"] == "http" and ds["jsonData"]["defaultDatabase"] == "telemetry"
    assert ds["jsonData"]["traces"]["defaultTable"] == "otel_traces"
    assert ds["jsonData"]["logs"]["defaultTable"] == "otel_logs"


def test_dashboard_provider_loads_etc_grafana_dashboards() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards/fleetforge.yaml").read_text(encoding="utf-8"))
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"


def test_alert_rules_reference_real_uids_panels_and_queries(
    alerts: dict[str, Any], board: dict[str, Any]
) -> None:
    assert alerts["apiVersion"] == 1
    (group,) = alerts["groups"]
    rules = {r["uid"]: r for r in group["rules"]}
    assert set(rules) == {
        "fleetforge-run-success-slo",
        "fleetforge-policy-deny-surge",
        "fleetforge-tool-flake-slo",
    }
    panel_ids = {str(p["id"]) for p in board["panels"]}
    for spec in RULES:
        rule = rules[spec.uid]
        refs = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in refs
        query = refs["A"]
        assert query["datasourceUid"] == DATASOURCE_UID
        assert query["model"]["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
        sql = (ROOT / f"deploy/grafana/alerts/{spec.source}.sql").read_text(encoding="utf-8").strip()
        assert query["model"]["rawSql"] == sql and "$__timeFilter(bucket)" in sql
        assert spec.column in sql
        for ref in ("B", "C"):
            assert refs[ref]["datasourceUid"] == "__expr__"
            assert refs[ref]["model"]["expression"] in refs
        threshold = refs["C"]["model"]["conditions"][0]["evaluator"]
        assert threshold == {"type": spec.op, "params": [spec.threshold]}
        assert rule["annotations"]["__dashboardUid__"] == DASHBOARD_UID
        assert rule["annotations"]["__panelId__"] in panel_ids
        assert "$" not in json.dumps(rule["labels"])  # Grafana interpolates env vars in labels
