"""The dashboard's run drill-down in a real headless Chromium: an agent's transcript (turns, tool calls with
their arguments and results, tokens, guardrail decisions), hostile tool results shown as text, and large
values cut with a note. Screenshots are saved under artifacts/ (FLEETFORGE_ARTIFACTS to move them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fleetforge import Client, tool
from fleetforge.adapters.views.dashboard.app import Dashboard, DashboardServer
from fleetforge.adapters.views.dashboard.drilldown import PAYLOAD_BYTES
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet
from tests.browser import console, dump_dom, need_chromium, screenshot

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FLEETFORGE_ARTIFACTS", ROOT / "artifacts"))
HOSTILE = ("<script>document.body.dataset.pwned = 'script'</script>"
           "<img src=x onerror=\"document.body.dataset.pwned = 'img'\">")
BIG = 40_000

# The support agent: loops over crm_lookup and weather; tool_acl denies weather, so the model is
# answered a deny reason. Used when the demo fleet has no agent run of its own.
SUPPORT_AGENT: dict[str, Any] = {
    "workspace": "acme", "app": "support-agent", "seed": 11,
    "packs": [{"name": "tool_acl", "deny": ["weather"]}],
    "steps": [{"id": "support", "type": "agent", "inputs": {
        "model": "sim-small", "instructions": "You are a support agent. Look the customer up first.",
        "messages": [{"role": "user", "content": "Customer C00042 asks whether the storm delays delivery."}],
        "tools": ["crm_lookup", "weather"], "max_turns": 6, "sim_tool_turns": 2, "sim_parallel_calls": 2}}],
}


@tool
def fetch_page(url: str) -> dict[str, Any]:
    """Fetch a web page (answers markup that must never run in the dashboard)."""
    return {"url": url, "html": HOSTILE}


@tool
def big_report(topic: str) -> dict[str, Any]:
    """A report far larger than the dashboard shows."""
    return {"topic": topic, "body": "y" * BIG}


def _demo_agent_spec() -> dict[str, Any]:
    """The demo's first agent run (one calling no webhook), or the issue's support agent while the demo fleet
    has none."""
    found = [s for s in demo_fleet(16, 3) if any(st["type"] == "agent" for st in s["steps"])
             and WEBHOOK_PLACEHOLDER not in json.dumps(s)]
    return found[0] if found else SUPPORT_AGENT


@dataclass
class _Value:
    """A value the page shows: the class of its payload block, the step it is under (the innermost
    element with a data-step: a step section, a turn or a call), its text, its "truncated" note."""

    cls: str
    step: str
    text: str = ""
    note: str = ""


_VOID = frozenset({"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


class _Drill(HTMLParser):
    """What the drill-down dialog shows: turns, calls, values, decisions, and every tag inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: dict[str, dict[str, str]] = {}  # by step id
        self.calls: list[dict[str, str]] = []
        self.units: dict[str, dict[str, str]] = {}  # by agent step id
        self.values: list[_Value] = []
        self.tags: list[str] = []
        self.effects: list[tuple[str, str]] = []  # (step, effect)
        self.body: dict[str, str] = {}
        self.run = ""
        self._open: list[str] | None = None  # data-step of each open element of the dialog, "" for none
        self._sink = ""

    def of(self, cls: str, under: str = "") -> list[_Value]:
        return [v for v in self.values if v.cls == cls and v.step.startswith(under)]

    def _step(self) -> str:
        return next((s for s in reversed(self._open or []) if s), "")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if a.get("id") == "drill-body":
            self._open, self.run = [""], a.get("data-run", "")
            return
        if not self._open:
            return
        self.tags.append(tag)
        if tag not in _VOID:
            self._open.append(a.get("data-step", ""))
        classes = a.get("class", "").split()
        if "data-turn" in a:
            self.turns[a["data-step"]] = a
        if "data-tool" in a:
            self.calls.append(a)
        if "data-units" in a:
            self.units[self._step()] = a
        if "data-effect" in a:
            self.effects.append((self._step(), a["data-effect"]))
        if "payload" in classes:
            self.values.append(_Value(" ".join(c for c in classes if c != "payload"), self._step()))
        self._sink = "text" if tag == "pre" else "note" if "trunc" in classes else ""

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in _VOID:
            self._open.pop()
            self._sink = ""

    def handle_data(self, data: str) -> None:
        if self._sink and self.values:
            value = self.values[-1]
            setattr(value, self._sink, getattr(value, self._sink) + data)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Client]]:
    """A store with the demo's agent run and a hostile agent run, served by the dashboard."""
    need_chromium()
    client = Client(data_dir=tmp_path_factory.mktemp("drill"), tools=[fetch_page, big_report])
    runs = {
        "demo": client.submit(_demo_agent_spec()).run_id,
        "hostile": client.submit({"seed": 5, "steps": [{"id": "browse", "type": "agent", "inputs": {
            "model": "sim-small", "instructions": f"Summarize pages. {HOSTILE}",
            "tools": ["fetch_page", "big_report"], "max_turns": 3, "sim_tool_turns": 1,
            "sim_parallel_calls": 2}}]}).run_id,
    }
    client.run_until_idle(timeout=120)
    server = DashboardServer(Dashboard(None, client.store), port=0).start()
    try:
        yield server.url, runs, client
    finally:
        server.stop()
        client.close()


def _open(url: str, run_id: str, name: str, profile: Path) -> _Drill:
    page = f"{url}#run={run_id}"
    screenshot(page, ARTIFACTS / f"dashboard-drill-{name}.png", Path(f"{profile}-shot"))
    dom, stderr = dump_dom(page, Path(f"{profile}-dom"))
    messages = console(stderr)
    blocked = [(m, s) for m, s in messages if "Content Security Policy" in m]
    assert not blocked, f"the page broke its own Content-Security-Policy (or markup tried to run): {blocked}"
    drill = _Drill()
    drill.feed(dom)
    assert drill.run == run_id, f"the drill-down did not open: {messages}"
    return drill


def test_agent_drilldown_shows_the_transcript(served: tuple[str, dict[str, str], Client], tmp_path: Path) -> None:
    url, runs, client = served
    drill = _open(url, runs["demo"], "agent", tmp_path / "chrome")
    # the truth, read independently: the agent's stored output and the attempts ledger
    steps = {s.step_id: s for s in client.store.get_steps(runs["demo"])}
    agent = next(s for s in steps.values() if s.type == "agent")
    out = agent.output
    assert out is not None and agent.status == "succeeded"
    ledger = {a.step_id: a.tokens_used for a in client.store.get_attempts(runs["demo"])}
    unit = f"{agent.step_id}."
    turns = {sid: t for sid, t in drill.turns.items() if sid.startswith(unit)}
    assert sorted(turns) == sorted(f"{unit}t{k}" for k in range(1, out["turns"] + 1))
    for sid, turn in turns.items():
        assert int(turn["data-tokens"]) == ledger[sid] > 0
    shown = [(c["data-tool"], c["data-step"]) for c in drill.calls if c["data-step"].startswith(unit)]
    assert shown == [(c["name"], c["step"]) for c in out["tool_calls"]]
    arguments = [json.loads(c["arguments"]) for c in out["tool_calls"]]
    assert [json.loads(v.text) for v in drill.of("arguments", unit)] == arguments
    answers = [json.loads(m["content"]) for m in out["messages"] if m["role"] == "tool"]
    assert [json.loads(v.text) for v in drill.of("result", unit)] == answers
    units = drill.units[agent.step_id]
    assert int(units["data-tokens"]) == sum(n for sid, n in ledger.items() if sid.startswith(unit))
    # guardrail decisions: each denied call shows its deny, and the model was answered the reason
    denied = [c for c in out["tool_calls"] if c["status"] == "denied"]
    assert [s for s, e in drill.effects if e == "deny" and s.startswith(unit)] == [c["step"] for c in denied]
    assert sum("denied by" in json.dumps(a) for a in answers) == len(denied)
    if _demo_agent_spec() is SUPPORT_AGENT:
        assert denied, "tool_acl denies weather"


def test_hostile_tool_results_show_as_text(served: tuple[str, dict[str, str], Client], tmp_path: Path) -> None:
    url, runs, client = served
    drill = _open(url, runs["hostile"], "hostile", tmp_path / "chrome")
    assert "data-pwned" not in drill.body, "markup from a tool result ran in the dashboard"
    assert "script" not in drill.tags and "img" not in drill.tags, drill.tags
    results = {c["data-tool"]: v for c in drill.calls for v in drill.of("result", c["data-step"])}
    assert json.loads(results["fetch_page"].text)["html"] == HOSTILE
    assert any(HOSTILE in v.text for v in drill.of("", "browse")), "the system message shows as text"
    # a large result is cut at PAYLOAD_BYTES, with a note giving the size of the whole
    call = next(s for s in client.store.get_steps(runs["hostile"])
                if s.spec.get("inputs", {}).get("tool") == "big_report")
    whole = json.dumps(call.output, indent=2, sort_keys=True, ensure_ascii=False)
    big = results["big_report"]
    assert len(whole.encode()) > PAYLOAD_BYTES and f"truncated, {len(whole.encode())} bytes" in big.note
    assert whole.startswith(big.text) and len(big.text.encode()) <= PAYLOAD_BYTES
    assert not results["fetch_page"].note
    assert all(len(v.text.encode()) <= PAYLOAD_BYTES for v in drill.values)
