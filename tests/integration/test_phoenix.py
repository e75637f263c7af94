"""A real Phoenix server (PyPI arize-phoenix, own virtualenv from scripts/setup-phoenix) receives a fleet.

Phoenix runs on loopback ports with authentication on; the exporter uses PHOENIX_ADMIN_SECRET as its
PHOENIX_API_KEY (Bearer). The spans are read back through Phoenix's REST API
(`/v1/projects/{name}/spans`) and checked: span kinds, parent links, token counts, statuses.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetforge.adapters.readers.traces import ExporterSet, start_exporters
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.exporting import SpanKind, TraceAssembler, TraceSpan
from fleetforge.domain.envelope import Envelope
from tests.exporters_support import agent_chain, asked_tool_calls, free_port, run_fleet, write_manifests
from tests.support import need

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
VENV = Path(os.environ.get("FLEETFORGE_PHOENIX_VENV") or CACHE / "fleetforge" / "phoenix-venv")  # scripts/setup-phoenix
STARTUP_S = 150.0
SECRET = "fleetforge-test-jwt-secret-0123456789abcd"
ADMIN = "fleetforge-test-admin-secret-9876543210zyx"


@dataclass
class Phoenix:
    url: str
    key: str

    def spans(self, project: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            r = httpx.get(f"{self.url}/v1/projects/{project}/spans", params=params,
                          headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
            if r.status_code == 404:
                return []
            r.raise_for_status()
            body = r.json()
            out += body["data"]
            cursor = body.get("next_cursor")
            if not cursor:
                return out


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    binary = VENV / "bin" / "phoenix"
    need(binary.is_file(), f"the Phoenix server ({binary}; create it with scripts/setup-phoenix)")
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
    env.update(PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(port), PHOENIX_GRPC_PORT=str(grpc),
               PHOENIX_WORKING_DIR=str(work), PHOENIX_TELEMETRY_ENABLED="false", PHOENIX_ENABLE_AUTH="true",
               PHOENIX_SECRET=SECRET, PHOENIX_ADMIN_SECRET=ADMIN)
    log = (work / "phoenix.log").open("wb")
    proc = subprocess.Popen([str(binary), "serve"], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"phoenix serve exited with {proc.returncode}: "
                            f"{(work / 'phoenix.log').read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"phoenix serve did not answer within {STARTUP_S:g}s: "
                            f"{(work / 'phoenix.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield Phoenix(url, ADMIN)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def fleet_to_phoenix(tmp_path: Path, phoenix: Phoenix, project: str, key: str,
                     runs: int = 20) -> tuple[SqliteStore, ExporterSet]:
    write_manifests(tmp_path / "plugins", ["phoenix"], flush_interval_ms=200, poll_interval_ms=50)
    env = {"FLEETFORGE_TRACE_EXPORTERS": "phoenix", "FLEETFORGE_PLUGINS_DIR": str(tmp_path / "plugins"),
           "PHOENIX_BASE_URL": phoenix.url, "PHOENIX_API_KEY": key, "PHOENIX_WORKSPACE": project}
    path = tmp_path / "state.db"
    started: list[ExporterSet] = []
    store = run_fleet(path, runs=runs, before=lambda: started.append(start_exporters(SqliteStore(path), env)))
    return store, started[0]


def expected(store: SqliteStore) -> list[TraceSpan]:
    asm = TraceAssembler()
    return [s for r in store.iter_outbox() for s in asm.feed(Envelope.from_json(r.envelope), r.position)]


def test_a_fleet_reaches_phoenix_with_kinds_parents_and_tokens(tmp_path: Path, phoenix: Phoenix,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    project = f"fleetforge-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.INFO):
        store, running = fleet_to_phoenix(tmp_path, phoenix, project, ADMIN)
        assert running.wait_idle(60) and running.stop(10)
    want = {s.span_id: s for s in expected(store)}
    deadline = time.monotonic() + 60
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # Phoenix inserts received spans asynchronously
        got = phoenix.spans(project)
        if len(got) >= len(want):
            break
        time.sleep(0.5)
    by_id = {g["context"]["span_id"]: g for g in got}
    assert set(by_id) == set(want) and len(got) == len(want)

    kinds = {SpanKind.RUN: "CHAIN", SpanKind.STEP: "CHAIN", SpanKind.LLM: "LLM", SpanKind.TOOL: "TOOL",
             SpanKind.HTTP: "TOOL", SpanKind.AGENT: "AGENT", SpanKind.GUARDRAIL: "GUARDRAIL"}
    assert Counter(g["span_kind"] for g in got) == Counter(kinds[s.kind] for s in want.values())
    assert {"CHAIN", "LLM", "TOOL", "GUARDRAIL"} <= {g["span_kind"] for g in got}
    for span_id, g in by_id.items():
        s = want[span_id]
        assert g["context"]["trace_id"] == s.trace_id and g["name"] == s.name
        assert g["parent_id"] == s.parent_span_id
        if s.parent_span_id is not None:
            parent = by_id[s.parent_span_id]
            assert parent["context"]["trace_id"] == g["context"]["trace_id"]
            assert parent["span_kind"] == ("CHAIN" if s.kind not in (SpanKind.GUARDRAIL, SpanKind.STEP) else kinds[want[
                s.parent_span_id].kind])
        assert g["status_code"] == ("OK" if s.ok else "ERROR")
        attrs = g["attributes"]
        if s.kind is SpanKind.LLM and s.usage is not None:
            assert attrs["llm.token_count.prompt"] == s.usage.input_tokens
            assert attrs["llm.token_count.completion"] == s.usage.output_tokens
            assert attrs["llm.token_count.total"] == s.usage.total_tokens
            assert attrs["llm.model_name"] == s.model
        if s.kind in (SpanKind.TOOL, SpanKind.HTTP):
            assert attrs["tool.name"] == (s.tool or s.name)
    # an agent run: AGENT -> (turn) -> LLM -> (tool call) -> TOOL, each tool call the one the model asked for
    asked = asked_tool_calls(store)
    calls = [g for g in got if g["span_kind"] == "TOOL" and (g["attributes"]["run_id"], g["attributes"]["step_id"])
             in asked]
    assert calls
    for g in calls:
        a = g["attributes"]
        assert (a["gen_ai.tool.call.id"], a["gen_ai.tool.name"]) == asked[(a["run_id"], a["step_id"])]
        chain = agent_chain(g["context"]["span_id"], lambda i: by_id[i]["parent_id"], lambda i: by_id[i]["span_kind"])
        assert chain[:5] == ["TOOL", "CHAIN", "LLM", "CHAIN", "AGENT"]
        assert by_id[by_id[g["parent_id"]]["parent_id"]]["attributes"]["gen_ai.operation.name"] == "chat"
    ledger = sum(a.input_tokens + a.output_tokens for r in store.list_runs(limit=1000)
                 for a in store.get_attempts(r.id) if a.status == "succeeded" and a.model)
    assert sum(g["attributes"]["llm.token_count.total"] for g in got if "llm.token_count.total" in g["attributes"]
               and want[g["parent_id"]].ok) == ledger  # the llm unit's attempt succeeded
    assert ADMIN not in caplog.text


def test_phoenix_refuses_a_wrong_key_and_the_exporter_parks(tmp_path: Path, phoenix: Phoenix,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    project = f"fleetforge-{uuid.uuid4().hex[:8]}"
    wrong = "not-the-admin-secret-0000000000000000"
    with caplog.at_level(logging.WARNING, logger="fleetforge.exporters"):
        store, running = fleet_to_phoenix(tmp_path, phoenix, project, wrong, runs=4)
        assert store.count_open_runs() == 0
        assert not running.wait_idle(5)
        (e,) = running.exporters
        assert e.info.state == "auth_failed" and e.info.last_error == "HTTP 401"
        running.stop(5)
    assert sum("refused the credentials" in r.getMessage() for r in caplog.records) == 1
    assert wrong not in caplog.text
    assert store.get_cursor("exporter-phoenix") == (0, 0)
    assert phoenix.spans(project) == []
