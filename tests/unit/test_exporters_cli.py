"""`fleetforge exporters status|run` through typer (the module registers itself on any app)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from fleetforge.adapters.cli import exporters
from tests.exporters_support import run_fleet, write_manifests


def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """test root"""

    exporters.register(root)
    return root


def test_status_explains_what_is_on_and_off(tmp_path: Path) -> None:
    write_manifests(tmp_path / "plugins", ["phoenix", "langsmith"])
    run_fleet(tmp_path / "data" / "state.db", runs=2)
    env = {"FLEETFORGE_TRACE_EXPORTERS": "phoenix,langsmith,langfuse", "PHOENIX_API_KEY": "px-secret-77",
           "LANGSMITH_API_KEY": ""}
    result = CliRunner().invoke(app(), ["exporters", "status", "--plugins-dir", str(tmp_path / "plugins"),
                                        "--data-dir", str(tmp_path / "data"), "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {r["name"]: r for r in doc["exporters"]}
    assert rows["phoenix"]["active"] and rows["phoenix"]["endpoint"] == "https://app.phoenix.arize.com"
    assert rows["phoenix"]["backlog_events"] > 0 and rows["phoenix"]["oldest_undelivered"]
    assert not rows["langsmith"]["active"] and "LANGSMITH_API_KEY" in rows["langsmith"]["reason"]
    assert not rows["langfuse"]["active"] and "no manifest" in rows["langfuse"]["reason"]
    assert "px-secret-77" not in result.output

    text = CliRunner().invoke(app(), ["exporters", "status", "--plugins-dir", str(tmp_path / "plugins")],
                              env={**env, "FLEETFORGE_DATA_DIR": str(tmp_path / "nowhere")})
    assert text.exit_code == 0 and "active: phoenix" in text.stdout and "off" in text.stdout


def test_status_without_the_env_var_names_the_default(tmp_path: Path) -> None:
    result = CliRunner().invoke(app(), ["exporters", "status"], env={"FLEETFORGE_TRACE_EXPORTERS": "",
                                                                      "FLEETFORGE_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0 and "FLEETFORGE_TRACE_EXPORTERS is not set" in result.stdout


def test_run_without_an_active_exporter_fails_with_the_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(app(), ["exporters", "run", "--until-idle", "--exporters", "langfuse",
                                        "--plugins-dir", str(tmp_path), "--data-dir", str(tmp_path)], env={})
    assert result.exit_code == 2
    assert "no trace exporter is active" in result.output and "no manifest" in result.output
