"""The LangGraph example from the command line, as docs/agents.md gives it: submit, worker, `runs get`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.langgraph_support import EXAMPLE, REPO, need_langgraph

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_"))}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(EXAMPLE), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "fleetforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_the_example_spec_runs_and_runs_get_shows_its_turns_and_tool_calls(tmp_path: Path) -> None:
    need_langgraph()
    dd = ("--data-dir", str(tmp_path / "data"))
    rid = _cli("submit", str(EXAMPLE / "support.yaml"), *dd, cwd=tmp_path).stdout.strip()
    _cli("worker", "--until-idle", "--id", "w-lg", "--poll-ms", "5", *dd, cwd=tmp_path)
    got = json.loads(_cli("runs", "get", rid, "--json", *dd, cwd=tmp_path).stdout)
    assert got["status"] == "succeeded"
    assert [(s["step_id"], s["type"], s["status"]) for s in got["steps"]] == [
        ("triage", "agent", "succeeded"), ("triage.t1", "llm", "succeeded"),
        ("triage.t1.ccall_1_0", "tool", "succeeded"), ("triage.t2", "llm", "succeeded"),
        ("triage.t2.ccall_2_0", "tool", "succeeded"), ("triage.t3", "llm", "succeeded")]
    attempts = {a["step_id"]: a for a in got["attempts"]}
    assert attempts["triage"]["tool"] == "react_graph:create_graph" and attempts["triage"]["provider"] == "langgraph"
    assert all(attempts[t]["tokens_used"] > 0 and attempts[t]["model"] == "sim-small"
               for t in ("triage.t1", "triage.t2", "triage.t3"))
    assert attempts["triage.t1.ccall_1_0"]["tool"] == "lookup_order"
    assert ("triage.t2.ccall_2_0", "tool_acl", "allow") in {(d["step_id"], d["pack"], d["effect"])
                                                             for d in got["policy_decisions"]}
    answer = got["outputs"]["answer"]
    assert [m["role"] for m in answer] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    table = _cli("runs", "get", rid, *dd, cwd=tmp_path).stdout
    assert "triage.t2.ccall_2_0" in table
