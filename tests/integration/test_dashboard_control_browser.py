"""The dashboard's operator buttons in a real headless Chromium (driven over the DevTools protocol): with a
control token, a step waiting for approval is approved from the run drill-down and the run completes, the
actor being `dashboard:<token name>`; without one there is no button and a POST gets 405; a page on
another origin cannot approve through the dashboard's POST routes, with or without the buttons."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetforge import Client
from fleetforge.adapters.http.server import BackgroundServer, Receive, Scope, Send
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.adapters.views.dashboard.app import Dashboard, DashboardServer
from fleetforge.adapters.views.dashboard.control import DashboardControl
from fleetforge.core.tokens import create_token
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.tokens import Scope as TokenScope
from fleetforge.ports.clock import SystemClock
from tests.browser import Tab, need_chromium

pytestmark = pytest.mark.timeout(180)

GATED = {"workspace": "acme", "app": "dash",
         "steps": [{"id": "gate", "type": "tool", "approval": {}, "inputs": {"tool": "noop", "args": {}}},
                   {"id": "calc", "type": "tool", "depends_on": ["gate"],
                    "inputs": {"tool": "calculator", "args": {"expression": "40+2"}}}]}
DRILLED = "document.querySelector('#drill-body')?.dataset.run"
BUTTONS = "[...document.querySelectorAll('#drill-body button.control')].map(b => b.dataset.action)"


def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _gate(store: SqliteStore, run_id: str) -> str:
    return {s.step_id: str(s.status) for s in store.get_steps(run_id)}["gate"]


@pytest.fixture
def waiting(tmp_path: Path) -> Iterator[tuple[SqliteStore, str, str]]:
    """(the store, a run whose step `gate` waits for approval, a control token named ops)."""
    need_chromium()
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    token = create_token(store, TokenScope.CONTROL, "ops", SystemClock())[0]
    run_id = Client(store=store).submit(GATED).run_id
    with Client(store=store).worker(poll_interval_s=0.01):
        _until(lambda: _gate(store, run_id) == "waiting_approval")
    yield store, run_id, token
    store.close()


def _serve(dash: Dashboard) -> Iterator[str]:
    server = DashboardServer(dash, port=0).start()
    yield server.url.rstrip("/")
    server.stop()


def _approvals(store: SqliteStore, run_id: str) -> list[str]:
    return [r.envelope for r in store.iter_outbox() if r.run_id == run_id and '"approval_granted"' in r.envelope]


def test_a_step_is_approved_from_the_dashboard_with_a_control_token(
        waiting: tuple[SqliteStore, str, str], tmp_path: Path) -> None:
    store, run_id, token = waiting
    for url in _serve(Dashboard(None, store, DashboardControl(store, token))):
        with Tab(tmp_path / "profile") as tab:
            tab.goto(f"{url}/#run={run_id}")
            tab.wait(DRILLED)
            assert tab.eval(BUTTONS) == ["pause", "approve", "deny"]
            page = tab.eval("document.documentElement.outerHTML + location.href + document.cookie")
            assert token not in page and tab.eval("!!document.querySelector('meta[name=fleetforge-csrf]')")
            tab.eval("document.querySelector('section.step[data-step=gate] input.reason').value = 'looks right'")
            tab.eval("document.querySelector('section.step[data-step=gate] button[data-action=approve]').click()")
            tab.wait("!document.querySelector('#drill-body button[data-action=approve]')")  # reloaded
            assert tab.eval(BUTTONS) == ["pause"]
    result = Client(store=store).run(run_id)
    Client(store=store).run_until_idle(timeout=60)
    assert result.wait(30).status == "succeeded"
    assert result.result().steps["calc"].output == {"expression": "40+2", "result": 42}
    assert [(d.effect, d.reason) for d in store.get_decisions(run_id)] == [("allow", "looks right")]
    granted = _approvals(store, run_id)
    assert len(granted) == 1 and Envelope.from_json(granted[0]).payload["actor"] == "dashboard:ops"


def test_without_a_control_token_there_is_no_button_and_a_post_is_405(
        waiting: tuple[SqliteStore, str, str], tmp_path: Path) -> None:
    store, run_id, _ = waiting
    for url in _serve(Dashboard(None, store)):
        with Tab(tmp_path / "profile") as tab:
            tab.goto(f"{url}/#run={run_id}")
            tab.wait(DRILLED)
            assert tab.eval(BUTTONS) == [] and tab.eval("document.querySelectorAll('.controls').length") == 0
            status = tab.eval(f"fetch('api/runs/{run_id}/steps/gate/approve', {{method: 'POST', body: '{{}}', "
                              "headers: {'x-fleetforge-csrf': 'x', 'content-type': 'application/json'}})"
                              ".then(r => r.status)")
            assert status == 405
    assert _gate(store, run_id) == "waiting_approval" and not _approvals(store, run_id)


class _Attacker:
    """Another origin: an empty page the test runs its forged requests from."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"<!doctype html><title>elsewhere</title><body></body>"})


def test_a_page_on_another_origin_cannot_approve_through_the_dashboard(
        waiting: tuple[SqliteStore, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, run_id, token = waiting
    caplog.set_level(logging.INFO, "fleetforge.dashboard")
    attacker = BackgroundServer(_Attacker(), name="attacker").start()
    try:
        for url in _serve(Dashboard(None, store, DashboardControl(store, token))):
            target = f"{url}/api/runs/{run_id}/steps/gate/approve"
            with Tab(tmp_path / "profile") as tab:
                tab.goto(attacker.url)
                outcomes = tab.eval(f"""Promise.all([
                  fetch({json.dumps(target)}, {{method: 'POST', mode: 'no-cors', body: '{{}}'}})
                    .then(() => 'sent', () => 'failed'),
                  fetch({json.dumps(target)}, {{method: 'POST', body: '{{}}', headers: {{
                      'content-type': 'application/json', 'x-fleetforge-csrf': 'forged'}}}})
                    .then(r => 'read ' + r.status, () => 'blocked'),
                  fetch({json.dumps(url + "/")}).then(r => r.text()).then(() => 'read the page', () => 'blocked'),
                ])""")
                tab.eval(f"""(() => {{
                  const f = document.createElement('form');
                  f.method = 'POST'; f.action = {json.dumps(target)}; f.enctype = 'text/plain';
                  const i = document.createElement('input'); i.name = '{{"reason":"x", "a'; i.value = '"}}';
                  f.append(i); document.body.append(f); f.submit(); return true;
                }})()""")
                time.sleep(1.5)  # the form's navigation answers 403 (no anti-CSRF value, foreign Origin)
                landed = tab.eval("document.body.innerText")
    finally:
        attacker.stop()
    # the no-cors fetch and the form reach the dashboard and are refused there (its answer is unreadable:
    # Cross-Origin-Resource-Policy); the one with a custom header never passes its preflight
    assert outcomes[1:] == ["blocked", "blocked"]
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a control request")]
    assert len(refused) == 2 and all("Origin" in m for m in refused), refused
    assert "Origin" in landed
    assert _gate(store, run_id) == "waiting_approval" and not _approvals(store, run_id)
