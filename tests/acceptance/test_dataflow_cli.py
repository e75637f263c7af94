"""examples/research.yaml end to end: references resolve, run outputs are stored and shown by `runs get`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.acceptance.test_bad_input import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "research.yaml"


def test_research_example_passes_data_between_steps_and_shows_outputs(tmp_path: Path) -> None:
    dd = ["--data-dir", str(tmp_path / "data")]
    env = {"OTEL_EXPORTER_PROMETHEUS_PORT": "0"}
    sub = run_cli(["submit", str(EXAMPLE), "--json", *dd], cwd=tmp_path, env=env)
    assert sub.returncode == 0, sub.stderr
    run_id = json.loads(sub.stdout)["run_id"]
    work = run_cli(["worker", "--until-idle", *dd], cwd=tmp_path, env=env)
    assert work.returncode == 0, work.stderr
    got = run_cli(["runs", "get", run_id, "--json", *dd], cwd=tmp_path, env=env)
    doc = json.loads(got.stdout)
    assert doc["status"] == "succeeded", doc
    assert set(doc["outputs"]) == {"summary", "top_hit"}
    assert doc["outputs"]["top_hit"].startswith("https://example.com/durable-execution-for-ai-agents")
    text = run_cli(["runs", "get", run_id, *dd], cwd=tmp_path, env=env)
    assert "outputs {" in text.stdout
    with sqlite3.connect(tmp_path / "data" / "state.db") as conn:
        specs = dict(conn.execute("SELECT step_id, spec FROM steps WHERE run_id = ?", (run_id,)).fetchall())
    search = json.loads(specs["search"])["inputs"]["args"]
    assert search["k"] == 3  # a whole-value reference keeps its type
    assert "ada@example.com" not in "".join(specs.values())  # the run redacts: its inputs are stored redacted
