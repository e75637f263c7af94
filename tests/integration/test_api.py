"""The HTTP API (`fleetforge serve`) on every store, through a real server and real httpx clients:
authentication over every route of the table, tokens kept out of the store and the logs, the SSE stream
from submit to terminal and resumed with Last-Event-ID, the OpenAPI document, hostile requests, and the
Python client over the API running the README's flow."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import fleetforge
from fleetforge import Client
from fleetforge.adapters.api.app import ApiServer, api_context, build_app
from fleetforge.adapters.api.remote import ApiClient, ApiRunHandle, sse_events
from fleetforge.adapters.api.routing import ApiRoute
from fleetforge.adapters.api.table import ROUTES
from fleetforge.adapters.cli.wiring import build_runtime, tools_registry
from fleetforge.adapters.executors.pytools import register_tools
from fleetforge.core.tokens import create_token, revoke_token
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError, ConflictError, NotFoundError, SpecError
from fleetforge.domain.tokens import TOKEN_PATTERN, Forbidden, Scope, Unauthorized
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.store import Store
from fleetforge.ports.tokens import TokenStore
from tests.support import until

pytestmark = pytest.mark.timeout(120)

CLOCK = SystemClock()
SPEC = {"workspace": "acme", "app": "api",
        "steps": [{"id": "a", "type": "tool", "inputs": {"tool": "noop", "args": {}}},
                  {"id": "b", "type": "llm", "depends_on": ["a"],
                   "inputs": {"model": "sim-small", "prompt": "Say hello."}},
                  {"id": "c", "type": "tool", "depends_on": ["b"], "inputs": {"tool": "search",
                                                                                "args": {"query": "x"}}}]}


@dataclass
class Api:
    url: str
    store: Store
    tokens: dict[Scope, str]
    revoked: str

    def client(self, scope: Scope | None = None, token: str | None = None, **kw: Any) -> httpx.Client:
        secret = token or (self.tokens[scope] if scope else None)
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    server = ApiServer(api_context(store, poll_s=0.02, heartbeat_s=0.3), port=0).start()
    tokens = {scope: create_token(cast(TokenStore, store), scope, f"t-{scope}", CLOCK)[0] for scope in Scope}
    revoked, row = create_token(cast(TokenStore, store), Scope.CONTROL, "old", CLOCK)
    revoke_token(cast(TokenStore, store), row.id, CLOCK)
    yield Api(server.url.rstrip("/"), store, tokens, revoked)
    server.stop()


def snapshot(store: Store) -> tuple[Any, ...]:
    """Everything a request could change: runs and their steps, the outbox, idempotency, tokens."""
    runs = store.list_runs(limit=10_000)
    steps = {r.id: [(s.step_id, str(s.status)) for s in store.get_steps(r.id)] for r in runs}
    tokens = cast(TokenStore, store).list_tokens()
    return ([(r.id, str(r.status)) for r in runs], steps, [e.event_id for e in store.iter_outbox()], tokens)


def work(store: Store, tools: list[Any] = ()) -> None:  # type: ignore[assignment]
    """Run a worker on `store` until no run is open."""
    async def go() -> None:
        async with httpx.AsyncClient() as http:
            registry = tools_registry()
            register_tools(registry, list(tools))
            await build_runtime(store, http, tools=registry).worker("w-test", poll_interval_s=0.01).run(
                until_idle=True)

    asyncio.run(go())


def submitted(api: Api, spec: dict[str, Any] = SPEC) -> str:
    with api.client(Scope.SUBMIT) as c:
        r = c.post("/v1/runs", json=spec)
    assert r.status_code == 201, r.text
    return str(r.json()["run_id"])


GATED = {"workspace": "acme", "app": "api",
         "steps": [{"id": "gate", "type": "tool", "approval": {}, "inputs": {"tool": "noop", "args": {}}},
                   {"id": "calc", "type": "tool", "depends_on": ["gate"],
                    "inputs": {"tool": "calculator", "args": {"expression": "1+1"}}}]}


def step_status(store: Store, run_id: str, step: str) -> str:
    return {s.step_id: str(s.status) for s in store.get_steps(run_id)}[step]


def waiting(api: Api) -> str:
    """A run whose step `gate` waits for approval (claimed by a worker that then stops)."""
    run_id = submitted(api, GATED)
    with Client(store=api.store).worker(poll_interval_s=0.01):
        until(lambda: step_status(api.store, run_id, "gate") == "waiting_approval")
    return run_id


def paused(api: Api) -> str:
    run_id = submitted(api, GATED)
    with api.client(Scope.CONTROL) as c:
        assert c.post(f"/v1/runs/{run_id}/pause").json()["paused"] is True
    return run_id


def ended(api: Api) -> str:
    run_id = submitted(api)
    with api.client(Scope.CONTROL) as c:
        assert c.post(f"/v1/runs/{run_id}/cancel").json()["canceled"] is True
    return run_id


# a run each route's scope acts on successfully, and the body it sends
PREPARE: dict[str, tuple[Any, dict[str, Any] | None]] = {
    "submit_run": (submitted, SPEC),
    "approve_step": (waiting, {"reason": "checked"}),
    "deny_step": (waiting, {"reason": "fraud"}),
    "resume_run": (paused, {"patch": {"calc": {"tool": "calculator", "args": {"expression": "2+2"}}}}),
    "fork_run": (submitted, {"from": "b"}),
    "replay_run": (ended, {"timeout_s": 20}),
}


def request_for(route: ApiRoute, run_id: str) -> dict[str, Any]:
    url = route.path.replace("{run_id}", run_id).replace("{step_id}", "gate")
    kwargs: dict[str, Any] = {"method": route.method, "url": url}
    body = PREPARE.get(route.operation_id, (None, None))[1]
    if body is not None:
        kwargs["json"] = body
    return kwargs


# -- authentication, table-driven over every route ------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.operation_id)
def test_every_route_refuses_missing_bad_revoked_and_lower_scope_tokens(api: Api, route: ApiRoute) -> None:
    assert route.scope is not None, "every API route declares a scope"
    run_id = PREPARE.get(route.operation_id, (submitted, None))[0](api)  # a request that got through would show
    before = snapshot(api.store)
    lower = [s for s in Scope if s.rank < route.scope.rank]
    cases: list[tuple[str, dict[str, str], int]] = [
        ("no token", {}, 401),
        ("revoked token", {"authorization": f"Bearer {api.revoked}"}, 401),
        ("unknown token", {"authorization": "Bearer fft_" + "A" * 43}, 401),
        ("not a bearer token", {"authorization": f"Basic {api.tokens[Scope.CONTROL]}"}, 401),
        ("malformed token", {"authorization": "Bearer hunter2"}, 401),
        *((f"{s} token", {"authorization": f"Bearer {api.tokens[s]}"}, 403) for s in lower),
    ]
    with httpx.Client(base_url=api.url, timeout=30) as c:
        for name, headers, status in cases:
            r = c.request(**request_for(route, run_id), headers=headers)
            assert r.status_code == status, (name, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"], name
            assert snapshot(api.store) == before, f"{name} changed the store"
    # the token of the route's scope gets through (so the refusals above are the check, not a broken route)
    with api.client(route.scope) as c, c.stream(**request_for(route, run_id)) as r:
        assert r.status_code in (200, 201), r.read()


def test_scopes_are_ordered(api: Api) -> None:
    run_id = submitted(api)
    with api.client(Scope.SUBMIT) as c:
        assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 403
        assert c.get(f"/v1/runs/{run_id}").status_code == 200
    with api.client(Scope.CONTROL) as c:
        r = c.post(f"/v1/runs/{run_id[:8]}/cancel")
        assert r.status_code == 200 and r.json() == {"run_id": run_id, "canceled": True, "status": "canceled"}
        assert c.post(f"/v1/runs/{run_id}/cancel").json()["canceled"] is False


def test_tokens_never_reach_the_store_or_the_logs(api: Api, store: Store, backend: str, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [*api.tokens.values(), api.revoked]
    with api.client(Scope.CONTROL) as c:
        run_id = c.post("/v1/runs", json=SPEC, headers={"idempotency-key": "k-1"}).json()["run_id"]
        for secret in secrets:  # tokens where they do not belong: paths, queries, bodies, refused requests
            httpx.get(f"{api.url}/v1/runs/{secret}", headers={"authorization": f"Bearer {secret}x"})
            c.get(f"/v1/runs/{secret}")
            c.get("/v1/runs", params={"workspace": secret, "status": secret})
            c.post("/v1/runs", content=f'{{"steps": "{secret}"}}')
            c.get(f"/v1/runs/{run_id}/events", headers={"last-event-id": secret})
        r = c.get(f"/v1/runs/{api.tokens[Scope.READ]}")
        assert r.status_code == 404 and "fft_" not in r.text  # the error message masks it
    work(store)
    # every log line of the process, but the test's own HTTP client logging the URLs it was told to request
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                        if r.name.split(".")[0] not in {"httpx", "httpcore"})
    assert "refused GET /v1/runs/***" in logged  # the server logged the refusals, tokens masked
    assert not any(s in logged for s in secrets)
    if backend == "sqlite":
        sqlite = cast(Any, store)
        files = b"".join(p.read_bytes() for p in Path(sqlite.path).parent.glob(f"{Path(sqlite.path).name}*"))
    else:
        pg = cast(Any, store)
        with pg.transaction() as tx:
            files = repr(tx.execute("dump", "SELECT * FROM api_tokens")).encode() + repr(
                tx.execute("dump", "SELECT envelope FROM outbox")).encode()
    assert files and not any(s.encode() in files for s in secrets)
    digests = {row.digest for row in cast(TokenStore, store).list_tokens()}
    assert len(digests) == len(secrets) and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)


# -- Server-Sent Events ---------------------------------------------------------------------------


def outbox_events(store: Store, run_id: str) -> list[tuple[str, str]]:
    """(position as an SSE id, event id) of the run's events, read from the outbox directly."""
    return [(f"{r.position[0]}-{r.position[1]}", r.event_id) for r in store.iter_outbox() if r.run_id == run_id]


def read_stream(api: Api, run_id: str, last: str | None = None, stop_after: int | None = None) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    headers = {"last-event-id": last} if last else {}
    with api.client(Scope.READ) as c, c.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for event_id, data in sse_events(r.iter_lines()):
            got.append((str(event_id), Envelope.from_json(data).id))
            if stop_after is not None and len(got) == stop_after:
                break  # leaving the block drops the connection mid-stream
    return got


def test_sse_delivers_a_run_from_submit_to_terminal_and_resumes_after_a_disconnect(api: Api) -> None:
    run_id = submitted(api)
    first = read_stream(api, run_id, stop_after=1)  # connected before any worker: live from the first event
    streamed: list[list[tuple[str, str]]] = []
    reader = threading.Thread(target=lambda: streamed.append(read_stream(api, run_id)))
    reader.start()
    worker = threading.Thread(target=work, args=(api.store,))
    worker.start()
    partial = read_stream(api, run_id, last=first[-1][0], stop_after=4)  # disconnects while the run goes on
    rest = read_stream(api, run_id, last=partial[-1][0])  # resumes after the last event it got
    worker.join(60)
    reader.join(60)
    expected = outbox_events(api.store, run_id)
    kinds = [r.kind for r in api.store.iter_outbox() if r.run_id == run_id]
    assert kinds[0] == "run_submitted" and kinds[-1] == "run_succeeded" and len(kinds) > 8
    assert streamed == [expected]  # one connection, from submit to terminal, in commit order
    assert first + partial + rest == expected  # no gap, no duplicate across two disconnects
    with api.client(Scope.READ) as c:  # resumed after the terminal event: 204 tells EventSource to stop
        r = c.get(f"/v1/runs/{run_id}/events", headers={"last-event-id": expected[-1][0]})
        assert r.status_code == 204
        tail = c.get(f"/v1/runs/{run_id}/events", params={"after": expected[-3][0]})
        assert [e for e, _ in sse_events(tail.text.splitlines())] == [p for p, _ in expected[-2:]]


# -- OpenAPI ----------------------------------------------------------------------------------------


def test_openapi_lists_every_route_with_its_scope(api: Api, store: Store) -> None:
    doc = httpx.get(f"{api.url}/openapi.json").json()  # public: no token
    assert doc["openapi"].startswith("3.1")
    served = {(m, r.path) for r in build_app(api_context(store)).routes  # type: ignore[attr-defined]
              for m in (r.methods or ()) if m != "HEAD" and r.path != "/openapi.json"}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served and len(served) == len(ROUTES) >= 5
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert route.scope is not None and op["x-fleetforge-scope"] == route.scope.value
        assert op["security"] == [{"bearer": []}] and {"401", "403"} <= set(op["responses"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# -- hostile input ----------------------------------------------------------------------------------


def test_hostile_requests_get_clear_4xx_and_store_nothing(api: Api) -> None:
    before = snapshot(api.store)
    huge = b'{"steps": [' + b" " * (2 * 1024 * 1024) + b"]}"
    bomb = gzip.compress(b'{"steps": "' + b"a" * (64 * 1024 * 1024) + b'"}')
    with api.client(Scope.CONTROL) as c:
        cases = [
            (c.post("/v1/runs", content=huge), 413, "limit"),
            (c.post("/v1/runs", content=iter([huge[:1 << 20], huge[1 << 20:]])), 413, "limit"),  # chunked
            (c.post("/v1/runs", content=bomb, headers={"content-encoding": "gzip"}), 413, "decompressed"),
            (c.post("/v1/runs", content=b"x", headers={"content-encoding": "br"}), 415, "Content-Encoding"),
            (c.post("/v1/runs", content=b'{"steps": [}'), 400, "invalid JSON"),
            (c.post("/v1/runs", content=b"\xff\xfe"), 400, "UTF-8"),
            (c.post("/v1/runs", content=b""), 400, "body"),
            (c.post("/v1/runs", json={"steps": [{"id": "a", "type": "nope"}]}), 422, "steps[0].type"),
            (c.post("/v1/runs", json=SPEC, headers={"idempotency-key": "k" * 300}), 422, "idempotency_key"),
            (c.get("/v1/runs", params={"limit": "0"}), 400, "limit"),
            (c.get("/v1/runs", params={"status": "nope"}), 400, "status"),
            (c.get("/v1/runs/no-such-run"), 404, "no run"),
            (c.get("/v1/runs/x/events", headers={"last-event-id": "1-x"}), 400, "Last-Event-ID"),
            (c.get("/v1/nothing"), 404, "openapi.json"),
            (c.delete("/v1/runs"), 405, "not allowed"),
            (c.get("/v1/runs", headers={"host": "evil.example"}), 421, "not allowed"),
        ]
    for response, status, words in cases:
        assert response.status_code == status, (words, response.text)
        assert words in response.text, response.text
        if status != 421:
            assert response.headers["content-type"] == "application/json"
    assert snapshot(api.store) == before


def test_a_prefix_names_one_run_and_an_ambiguous_one_lists_the_candidates(api: Api, store: Store) -> None:
    runtime = api_context(store).runtime
    ids = [runtime.submit(SPEC, run_id=f"cafe{i}-{n}") for i, n in ((1, "a"), (1, "b"), (2, "c"))]
    with api.client(Scope.READ) as c:
        assert {x["run_id"] for x in c.get("/v1/runs").json()} == set(ids)
        r = c.get("/v1/runs/cafe1")
        assert r.status_code == 400 and r.json()["candidates"] == ids[:2] and "more characters" in r.json()["error"]
        r = c.get("/v1/runs/cafe2")
        assert r.status_code == 200 and r.json()["run_id"] == ids[2]
        assert [s["step_id"] for s in r.json()["steps"]] == ["a", "b", "c"]


# -- the Python client over the API ----------------------------------------------------------------


@fleetforge.tool
def crm_account(customer_id: str, include_orders: bool = False) -> dict[str, Any]:
    """Look a customer's account up."""
    account: dict[str, Any] = {"customer_id": customer_id, "tier": "pro"}
    if include_orders:
        account["orders"] = ["o-1", "o-2"]
    return account


@fleetforge.tool
async def shorten(text: str, max_words: int = 5) -> str:
    """Keep the first `max_words` words of a text."""
    return " ".join(text.split()[:max_words])


README_SPEC = {
    "workspace": "acme", "app": "support",
    "steps": [
        {"id": "account", "type": "tool",
         "inputs": {"tool": "crm_account", "args": {"customer_id": "c-42", "include_orders": True}}},
        {"id": "reply", "type": "llm", "depends_on": ["account"],
         "inputs": {"model": "sim-small", "prompt": "Draft a reply for a pro customer."}},
        {"id": "subject", "type": "tool", "depends_on": ["reply"],
         "inputs": {"tool": "shorten", "args": {"text": "Your open orders o-1 and o-2 ship today"}}},
    ],
}


def test_the_client_over_the_api_runs_the_readme_flow(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETFORGE_API_TOKEN", raising=False)
    with Client(api.url, token=api.tokens[Scope.SUBMIT]) as client:
        assert isinstance(client, ApiClient)
        run = client.submit(README_SPEC, idempotency_key="ticket-1001")
        assert client.submit(README_SPEC, idempotency_key="ticket-1001").run_id == run.run_id  # stored once
        assert run.status() == "queued"
        worker = threading.Thread(target=work, args=(api.store, [crm_account, shorten]))
        worker.start()
        result = run.wait(timeout=60)
        worker.join(60)
        assert result.status == "succeeded" and result.done
        assert result.steps["account"].output == {"customer_id": "c-42", "tier": "pro", "orders": ["o-1", "o-2"]}
        assert result.steps["subject"].output == {"result": "Your open orders o-1 and"}
        events = list(run.events())
        assert [e.id for e in events] == [i for _, i in outbox_events(api.store, run.run_id)]
        assert events[0].kind == "run_submitted" and events[-1].kind == "run_succeeded"
        assert [e.kind for e in events].count("tool_call") == 2
        assert client.run(run.run_id[:10]).run_id == run.run_id
        assert [r.run_id for r in client.runs(status="succeeded")] == [run.run_id]
        with pytest.raises(Forbidden, match="scope control"):
            run.cancel()
        with pytest.raises(SpecError, match="steps"):
            client.submit({"workspace": "acme"})
        with pytest.raises(NotFoundError):
            client.run("no-such-run")
        with pytest.raises(ValueError, match="status"):
            client.runs(status="nope")
    with Client(api.url, token=api.tokens[Scope.CONTROL]) as control:
        assert control.run(run.run_id).cancel() is False  # already ended
    with Client(api.url, token=api.revoked) as revoked, pytest.raises(Unauthorized):
        revoked.runs()
    with Client(api.url, token=api.tokens[Scope.READ]) as reader:
        with pytest.raises(ConfigError, match="fleetforge worker"):
            reader.worker(tools=[crm_account])
        with pytest.raises(ConfigError, match="no store"):
            reader.store.list_runs()
    with pytest.raises(ConfigError, match="needs a bearer token"):
        Client(api.url)
    with pytest.raises(ConfigError, match="only an API URL"):
        Client(f"sqlite:///{api.url}.db", token=api.tokens[Scope.READ])


def test_the_client_over_the_api_times_out_and_cancels(api: Api) -> None:
    with Client(api.url, token=api.tokens[Scope.CONTROL]) as client:
        run = client.submit(SPEC)
        with pytest.raises(TimeoutError, match="still queued"):
            run.wait(timeout=0.5)
        assert run.cancel() is True
        assert run.wait(timeout=10).status == "canceled"
        assert [e.kind for e in run.events()][-1] == "run_canceled"


def test_token_pattern_matches_created_tokens(api: Api) -> None:
    assert all(TOKEN_PATTERN.fullmatch(t) for t in api.tokens.values())


def test_the_client_resumes_its_event_stream_across_a_server_restart(store: Store) -> None:
    token, _ = create_token(cast(TokenStore, store), Scope.READ, "reader", CLOCK)
    first = ApiServer(api_context(store, poll_s=0.02, heartbeat_s=0.3), port=0).start()
    url = first.url.rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    run_id = api_context(store).runtime.submit(SPEC)
    with Client(url, token=token) as client:
        stream = client.run(run_id).events(timeout=60)
        got = [next(stream)]  # run_submitted, from the first server
        first.stop()  # the connection drops; the client reconnects with Last-Event-ID
        second = ApiServer(api_context(store, poll_s=0.02, heartbeat_s=0.3), port=port).start()
        try:
            work(store)
            got.extend(stream)
        finally:
            second.stop()
    assert [e.id for e in got] == [i for _, i in outbox_events(store, run_id)]
    assert got[-1].kind == "run_succeeded"


# -- operators in control over the API --------------------------------------------------------------


def test_control_endpoints_record_the_token_as_actor_and_answer_clear_4xx(api: Api) -> None:
    run_id = waiting(api)
    token = next(t for t in cast(TokenStore, api.store).list_tokens() if t.name == f"t-{Scope.CONTROL}")
    with api.client(Scope.CONTROL) as c:
        assert c.post("/v1/runs/nope/steps/gate/approve").status_code == 404
        r = c.post(f"/v1/runs/{run_id}/steps/nope/approve")
        assert r.status_code == 404 and "no step 'nope'" in r.json()["error"]
        r = c.post(f"/v1/runs/{run_id}/steps/calc/approve")
        assert r.status_code == 409 and "not waiting for approval" in r.json()["error"]
        r = c.post(f"/v1/runs/{run_id}/steps/gate/deny", json={})
        assert r.status_code == 422 and "non-empty reason" in r.json()["error"]
        r = c.post(f"/v1/runs/{run_id}/steps/gate/deny", json={"reason": 3, "why": "x"})
        assert r.status_code == 422 and len(r.json()["problems"]) == 2
        assert c.post(f"/v1/runs/{run_id}/steps/gate/approve", content=b"{nope").status_code == 400
        r = c.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 409 and "not paused" in r.json()["error"]
        assert c.post(f"/v1/runs/{run_id}/pause").json() == {"run_id": run_id, "paused": True}
        r = c.post(f"/v1/runs/{run_id}/resume", json={"patch": {"calc": "2+2"}})
        assert r.status_code == 422 and r.json()["problems"], r.text
        r = c.post(f"/v1/runs/{run_id}/resume", json={"patch": {"calc": {"tool": "calculator",
                                                                          "args": {"expression": "20+22"}}}})
        assert r.status_code == 200 and r.json() == {"run_id": run_id, "patched": ["calc"]}
        r = c.post(f"/v1/runs/{run_id[:10]}/steps/gate/approve", json={"reason": "looked fine"})
        assert r.status_code == 200 and r.json()["actor"] == f"token:{token.name}#{token.id}"
        assert c.post(f"/v1/runs/{run_id}/fork", json={"from": "nope"}).status_code == 422
        assert c.post(f"/v1/runs/{run_id}/fork", json={}).status_code == 422
        assert c.post(f"/v1/runs/{run_id}/replay", json={"tolerance_tokens": -1}).status_code == 422
    work(api.store)
    assert api.store.get_run(run_id).status == "succeeded"  # type: ignore[union-attr]
    assert {s.step_id: s.output for s in api.store.get_steps(run_id)}["calc"] == {"expression": "20+22",
                                                                                  "result": 42}
    decisions = [(d.effect, d.reason) for d in api.store.get_decisions(run_id)]
    assert decisions == [("allow", "looked fine")]
    kinds = {str(e.kind): e.payload for e in (Envelope.from_json(r.envelope) for r in api.store.iter_outbox())
             if e.run_id == run_id}
    actor = f"token:{token.name}#{token.id}"
    assert kinds["run_paused"]["actor"] == kinds["step_patched"]["actor"] == actor
    assert all(t not in r.envelope for t in api.tokens.values() for r in api.store.iter_outbox())


def test_the_client_over_the_api_steers_runs(api: Api) -> None:
    with Client(api.url, token=api.tokens[Scope.CONTROL]) as client:
        ok, no = client.submit(GATED), client.submit(GATED)
        worker = threading.Thread(target=work, args=(api.store,))
        worker.start()
        until(lambda: all(step_status(api.store, r.run_id, "gate") == "waiting_approval" for r in (ok, no)))
        with pytest.raises(ConflictError, match="not waiting for approval"):
            ok.approve("calc")
        with pytest.raises(NotFoundError):
            client.approve("no-such-run", "gate")
        assert ok.pause() is True and ok.pause() is False
        with pytest.raises(SpecError, match=r"patch\.nope"):
            ok.resume(patch={"nope": {}})
        assert ok.resume(patch={"calc": {"tool": "calculator", "args": {"expression": "6*7"}}}) == ["calc"]
        ok.approve("gate", reason="fine")
        client.deny(no.run_id, "gate", "fraud")
        assert ok.wait(60).steps["calc"].output == {"expression": "6*7", "result": 42}
        assert no.wait(60).error == "policy_denied"
        worker.join(60)
        plain = client.submit(SPEC)
        fork = client.fork(ok.run_id, "calc", patch={"calc": {"tool": "calculator", "args": {"expression": "1+2"}}})
        assert isinstance(fork, ApiRunHandle) and fork.status() == "queued"
        work(api.store)
        assert fork.wait(30).steps["calc"].output == {"expression": "1+2", "result": 3}
        assert fork.result().steps["gate"].status == "succeeded"  # reused, not asked again
        report = client.replay(plain.run_id, timeout=30)
        local = Client(store=api.store).replay(plain.run_id, timeout=30)
        assert report.ok and report.calls_answered == 3 and report.to_dict() == local.to_dict()
    with Client(api.url, token=api.tokens[Scope.SUBMIT]) as submitter, pytest.raises(Forbidden):
        submitter.run(ok.run_id).pause()
