"""A graph step's turns and tool calls on a real Phoenix server, nested under the graph's agent span exactly
as a native agent's units are (the Phoenix server and its fixture: tests/integration/test_phoenix.py)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fleetforge.adapters.readers.traces import start_exporters
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.exporting import SpanKind
from tests.exporters_support import write_manifests
from tests.integration.clickhouse_fleet import open_store
from tests.integration.langgraph_support import graph_spec, need_langgraph, run_specs
from tests.integration.test_phoenix import ADMIN, Phoenix, expected, phoenix

__all__ = ["phoenix"]

pytestmark = pytest.mark.slow


def test_graph_units_reach_phoenix_nested_under_the_graph(tmp_path: Path, phoenix: Phoenix) -> None:
    need_langgraph()
    project = f"fleetforge-lg-{uuid.uuid4().hex[:8]}"
    write_manifests(tmp_path / "plugins", ["phoenix"], flush_interval_ms=200, poll_interval_ms=50)
    env = {"FLEETFORGE_TRACE_EXPORTERS": "phoenix", "FLEETFORGE_PLUGINS_DIR": str(tmp_path / "plugins"),
           "PHOENIX_BASE_URL": phoenix.url, "PHOENIX_API_KEY": ADMIN, "PHOENIX_WORKSPACE": project}
    path = tmp_path / "state.db"
    store = open_store(path)
    run_specs(store, [graph_spec(seed=1), graph_spec(seed=2, packs=[{"name": "tool_acl", "deny": ["refund"]}])])
    running = start_exporters(SqliteStore(path), env)
    assert running.wait_idle(60) and running.stop(10)
    want = {s.span_id: s for s in expected(store)}
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Phoenix inserts received spans asynchronously
        got = phoenix.spans(project)
        if len(got) >= len(want):
            break
        time.sleep(0.5)
    by_id = {g["context"]["span_id"]: g for g in got}
    assert set(by_id) == set(want) and len(got) == len(want)
    for span_id, g in by_id.items():
        assert g["parent_id"] == want[span_id].parent_span_id
    agents = {s.span_id: s for s in want.values() if s.kind is SpanKind.AGENT and s.step_id == "graph"}
    assert len(agents) == 2
    for s in want.values():  # each turn under invoke_agent, each tool call under the chat of its turn
        sid = s.step_id or ""
        if s.kind is SpanKind.STEP and sid.startswith("graph."):
            turn = sid.split(".c", 1)[0]
            parent = want[by_id[s.span_id]["parent_id"]]
            assert parent.span_id in agents if sid == turn else (parent.step_id, parent.kind) == (turn, SpanKind.LLM)
    kinds = Counter(by_id[s.span_id]["span_kind"] for s in want.values()
                    if s.kind in (SpanKind.LLM, SpanKind.TOOL) and (s.step_id or "").startswith("graph."))
    assert kinds == Counter({"LLM": 6, "TOOL": 3})  # 3 turns per run; 2 tool calls, 1 of them denied (no span)
    llm = [g for g in got if g["span_kind"] == "LLM"]
    assert all(g["attributes"]["llm.model_name"] == "sim-small" and g["attributes"]["llm.token_count.total"] > 0
               for g in llm)
    store.close()
