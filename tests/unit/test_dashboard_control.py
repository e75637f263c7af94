"""The dashboard's control gate (adapters/views/dashboard/control.py and its POST path in app.py): the
same-origin check, the anti-CSRF value, and that without a control token every POST stays 405."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from fleetforge.adapters.views.dashboard.app import Dashboard, _App
from fleetforge.adapters.views.dashboard.control import CSRF_HEADER, DashboardControl, same_origin
from fleetforge.domain.tokens import Scope, TokenRow, Unauthorized, hash_token

TOKEN = "fft_" + "k" * 43


class FakeTokens:
    """Token rows by digest, as a TokenStore answers them."""

    def __init__(self, scope: Scope = Scope.CONTROL, revoked: int | None = None) -> None:
        self.row = TokenRow("t1", "ops", scope, hash_token(TOKEN), 1, revoked)

    def token_by_digest(self, digest: str) -> TokenRow | None:
        return self.row if digest == self.row.digest else None


def control(**kw: Any) -> DashboardControl:
    return DashboardControl(FakeTokens(**kw), TOKEN)  # type: ignore[arg-type]


@pytest.mark.parametrize(("origin", "host", "ok"), [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("https://Dash.Example:443", "dash.example:443", True),
    ("http://127.0.0.1:8081", "127.0.0.1:8080", False),  # another port is another origin
    ("http://evil.example", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),  # sandboxed frames and file: pages
    ("http://127.0.0.1:8080.evil.example", "127.0.0.1:8080", False),
    ("ftp://127.0.0.1:8080", "127.0.0.1:8080", False),
    (None, "127.0.0.1:8080", False),
    ("http://127.0.0.1:8080", None, False),
])
def test_same_origin(origin: str | None, host: str | None, ok: bool) -> None:
    assert same_origin(origin, host) is ok


def test_csrf_values_are_fresh_and_only_this_process_makes_them() -> None:
    gate, other = control(), control()
    value = gate.csrf()
    assert gate.csrf_ok(value) and value != gate.csrf()
    nonce, mac = value.split(".")
    forged = [None, "", nonce, f"{nonce}.", f"{nonce}.{'0' * len(mac)}", f"{nonce}x.{mac}", other.csrf(), TOKEN]
    assert [v for v in forged if gate.csrf_ok(v)] == []


def test_refusal_needs_both_the_origin_and_the_csrf_value() -> None:
    gate = control()
    good = {"origin": "http://127.0.0.1:9", "host": "127.0.0.1:9", CSRF_HEADER: gate.csrf()}
    assert gate.refusal(good) is None
    assert "Origin" in (gate.refusal({**good, "origin": "http://elsewhere:9"}) or "")
    assert "Origin" in (gate.refusal({k: v for k, v in good.items() if k != "origin"}) or "")
    assert "anti-CSRF" in (gate.refusal({**good, CSRF_HEADER: "x.y"}) or "")


def test_a_token_that_is_revoked_or_below_control_is_refused_at_start() -> None:
    with pytest.raises(Unauthorized):
        control(revoked=5)
    with pytest.raises(Exception, match="scope"):
        control(scope=Scope.SUBMIT)
    assert TOKEN not in repr(control())


def _request(app: _App, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9") as c:
            return await c.request(method, path, headers=headers, content=b"{}")

    return asyncio.run(go())


def test_post_without_control_is_405_and_the_page_has_no_csrf_value() -> None:
    app = _App(Dashboard(None, None))
    r = _request(app, "POST", "/api/runs/r1/steps/s/approve", {"origin": "http://127.0.0.1:9"})
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert b"fleetforge-csrf" not in _request(app, "GET", "/").content
    assert _request(app, "GET", "/api/meta").json()["control"] is False


def test_post_with_control_acts_only_from_the_page() -> None:
    gate = control()
    acted: list[str] = []

    def act(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        acted.append(path)
        return 200, {"ok": True}

    gate.act = act  # type: ignore[method-assign]
    app = _App(Dashboard(None, None, gate))
    page = _request(app, "GET", "/").text
    value = page.split('name="fleetforge-csrf" content="', 1)[1].split('"', 1)[0]
    assert gate.csrf_ok(value) and TOKEN not in page
    assert "content-security-policy" in _request(app, "GET", "/").headers
    path = "/api/runs/r1/steps/s/approve"
    same = {"origin": "http://127.0.0.1:9"}
    assert _request(app, "POST", path, {"origin": "http://evil.example", CSRF_HEADER: value}).status_code == 403
    assert _request(app, "POST", path, same).status_code == 403
    assert _request(app, "POST", path, {**same, CSRF_HEADER: "a.b"}).status_code == 403
    assert acted == []
    assert _request(app, "POST", path, {**same, CSRF_HEADER: value}).json() == {"ok": True}
    assert acted == [path]
    assert _request(app, "PUT", path, {**same, CSRF_HEADER: value}).status_code == 405
    assert _request(app, "GET", "/api/meta").json()["control"] is True


def test_act_runs_the_operations_on_a_real_store(tmp_path: Any) -> None:
    from fleetforge import Client
    from fleetforge.adapters.stores.sqlite.store import SqliteStore
    from fleetforge.core.tokens import create_token, revoke_token
    from fleetforge.ports.clock import SystemClock

    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    token, row = create_token(store, Scope.CONTROL, "ops", SystemClock())
    gate = DashboardControl(store, token)
    client = Client(store=store)
    run_id = client.submit({"steps": [{"id": "a", "type": "tool", "approval": {},
                                       "inputs": {"tool": "noop", "args": {}}}]}).run_id
    with client.worker(poll_interval_s=0.01):
        while {s.step_id: str(s.status) for s in store.get_steps(run_id)}["a"] != "waiting_approval":
            time.sleep(0.01)
    base = f"/api/runs/{run_id[:12]}"
    assert gate.act(f"{base}/steps/a/deny", b"{}")[0] == 422  # a reason is required
    assert gate.act(f"{base}/steps/nope/deny", b'{"reason": "x"}')[0] == 404
    assert gate.act("/api/runs/nope/pause", b"")[0] == 404
    assert gate.act(f"{base}/resume", b"")[0] == 409
    assert gate.act(f"{base}/steps/a/deny", b'{"reason": 1}')[0] == 400
    assert gate.act(f"{base}/pause", b"") == (200, {"run_id": run_id, "actor": "dashboard:ops", "paused": True})
    assert gate.act(f"{base}/resume", b"") == (200, {"run_id": run_id, "actor": "dashboard:ops", "patched": []})
    assert gate.act(f"{base}/steps/a/deny", b'{"reason": "fraud"}')[0] == 200
    assert [(d.effect, d.reason) for d in store.get_decisions(run_id)] == [("deny", "fraud")]
    revoke_token(store, row.id, SystemClock())
    status, doc = gate.act(f"{base}/pause", b"")
    assert status == 403 and "refused" in doc["error"] and token not in doc["error"]
    store.close()
