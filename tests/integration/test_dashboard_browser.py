"""The built-in dashboard in a real headless Chromium, against a demo and against an empty store.

Screenshots are saved under artifacts/ (FLEETFORGE_ARTIFACTS to move them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.browser import console, dump_dom, need_chromium, screenshot

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FLEETFORGE_ARTIFACTS", ROOT / "artifacts"))


class _Page(HTMLParser):
    """Collects what the page shows: stats, panel point counts, table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, str] = {}
        self.panels: dict[str, int] = {}
        self.tools: list[list[str]] = []
        self.agent_tools: list[list[str]] = []
        self.runs = 0
        self.body: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if "data-stat" in a:
            self.stats[a["data-stat"]] = a.get("data-raw", "")
        if "data-panel" in a and "data-points" in a:
            self.panels[a["data-panel"]] = int(a["data-points"])
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table in ("table-tool_flakes", "table-agent_tool_calls") and "data-tool" in a:
            self._row = []
        if tag == "tr" and self._table == "runs" and "data-run" in a:
            self.runs += 1
        if tag == "td" and self._row is not None:
            self._cell = True
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = False
        if tag == "tr" and self._row is not None:
            (self.tools if self._table == "table-tool_flakes" else self.agent_tools).append(self._row)
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell and self._row is not None:
            self._row[-1] += data


def _browse(url: str, shot: Path, profile: Path) -> _Page:
    screenshot(url, shot, Path(f"{profile}-shot"))
    dom, stderr = dump_dom(url, Path(f"{profile}-dom"))
    blocked = [(msg, src) for msg, src in console(stderr) if "Content Security Policy" in msg]
    assert not blocked, f"the page broke its own Content-Security-Policy: {blocked}"
    page = _Page()
    page.feed(dom)
    return page


def _serve(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Start a serving command; yield (stdout first line, dashboard URL); stop it afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "fleetforge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        first = ""
        if "--json" in args:
            assert proc.stdout is not None
            first = proc.stdout.readline()
        deadline = time.monotonic() + 120
        url = ""
        assert proc.stderr is not None
        while time.monotonic() < deadline and not url:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            if m := re.search(r"Dashboard on (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        assert url, "the dashboard did not start"
        yield first, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> None:
    need_chromium()


def test_demo_dashboard_shows_the_ground_truth(browser: None, tmp_path: Path) -> None:
    env = {**os.environ, "FLEETFORGE_DEMO_WORKERS": "2"}
    args = ["demo", "--runs", "24", "--seed", "5", "--data-dir", str(tmp_path / "d"), "--json", "--port", "0"]
    for line, url in _serve(args, env):
        truth: dict[str, Any] = json.loads(line)
        page = _browse(url, ARTIFACTS / "dashboard-demo.png", tmp_path / "chrome")
    assert page.body.get("data-loaded") == "true", page.body
    assert "data-error" not in page.body
    # every chart holds data, the tool table and the runs list have rows
    assert set(page.panels) == {"run_slo", "retry_heatmap", "policy_bursts", "budget_burndown", "tool_flakes",
                                "agent_turns", "agent_tool_calls"}
    assert all(n > 0 for n in page.panels.values()), page.panels
    assert page.runs == min(24, 50)
    # the numbers shown equal the demo's --json summary
    assert int(page.stats["runs"]) == truth["runs"]["total"]
    assert page.stats["attempts (retries)"] == f'{truth["steps"]["attempts"]}/{truth["steps"]["retries"]}'
    assert int(page.stats["tokens used"]) == truth["budget"]["tokens_used"]
    assert float(page.stats["cost used"]) == pytest.approx(truth["budget"]["cost_used"], abs=1e-9)
    assert int(page.stats["policy denies"]) == truth["policy_decisions"]["by_effect"]["deny"]
    succeeded = truth["runs"]["by_status"].get("succeeded", 0)
    assert float(page.stats["success SLO"]) == pytest.approx(succeeded / truth["runs"]["total"])
    calls = sum(int(r[2].replace(",", "")) for r in page.tools)
    failures = sum(int(r[3].replace(",", "")) for r in page.tools)
    assert (calls, failures) == (truth["tool_calls"]["total"], truth["tool_calls"]["failed"])
    shown = {r[0]: {"ok": int(r[2]), "failed": int(r[3]), "denied": int(r[4])} for r in page.agent_tools}
    assert shown == truth["agents"]["tool_calls"]["by_tool"]


def test_empty_store_renders_gracefully(browser: None, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    for _, url in _serve(["dashboard", "--data-dir", str(empty), "--port", "0"], dict(os.environ)):
        page = _browse(url, ARTIFACTS / "dashboard-empty.png", tmp_path / "chrome")
    assert page.body.get("data-loaded") == "true", page.body
    assert "data-error" not in page.body
    assert page.panels and all(n == 0 for n in page.panels.values())
    assert page.runs == 0
    assert not (empty / "state.db").exists(), "the dashboard must not create a store"
