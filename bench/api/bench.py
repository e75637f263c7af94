"""What the HTTP API adds: submit latency over HTTP beside the Python client on the store, and how soon an
SSE client sees an event after it commits, beside a tail reading the outbox in-process.

Both sides use the same SQLite store file. Submit: N one-step specs through `POST /v1/runs` (one keep-alive
connection, token checked on each) against N `Client.submit` calls (the store directly). Freshness: a
writer appends one event to a run every 20 ms; an SSE client and an in-process `follow_run` (the same
poll interval) each record when they see it; figures are the delay from commit, p50 and p95.

    PYTHONPATH=src python bench/api/bench.py [--submits 300] [--events 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import cast

import httpx

from fleetforge import Client
from fleetforge.adapters.api.app import ApiServer, api_context
from fleetforge.adapters.api.remote import sse_events
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.runs import follow_run
from fleetforge.core.tokens import create_token
from fleetforge.domain.envelope import Envelope, TraceContext
from fleetforge.domain.names import EventKind
from fleetforge.domain.tokens import Scope
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.tokens import TokenStore

SPEC = {"workspace": "bench", "app": "api", "steps": [{"id": "a", "type": "tool", "inputs": {"tool": "noop"}}]}
POLL_S = 0.02


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def bench_submit(url: str, token: str, path: Path, n: int) -> tuple[list[float], list[float]]:
    over_http, direct = [], []
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.post("/v1/runs", json=SPEC).raise_for_status()
            over_http.append(time.perf_counter() - t)
    with Client(f"sqlite:///{path}") as client:
        for _ in range(n):
            t = time.perf_counter()
            client.submit(SPEC)
            direct.append(time.perf_counter() - t)
    return over_http, direct


def event(run_id: str, i: int) -> Envelope:
    kind = EventKind.RUN_SUCCEEDED if i < 0 else EventKind.STEP_QUEUED
    return Envelope(id=str(uuid.uuid4()), kind=kind, run_id=run_id, step_id=None if i < 0 else "a",
                    attempt=0, workspace="bench", app="api", occurred_us=time.time_ns() // 1000,
                    trace=TraceContext("0" * 31 + "1", "0" * 15 + "1"), payload={"i": i})


def bench_freshness(url: str, token: str, store: SqliteStore, n: int) -> tuple[list[float], list[float]]:
    run_id = Client(store=store).submit(SPEC).run_id
    committed: dict[str, float] = {}
    seen_sse: dict[str, float] = {}
    seen_tail: dict[str, float] = {}

    def sse() -> None:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60) as c, \
                c.stream("GET", f"/v1/runs/{run_id}/events") as r:
            for _, data in sse_events(r.iter_lines()):
                seen_sse[Envelope.from_json(data).id] = time.perf_counter()

    def tail() -> None:
        for env in follow_run(store, run_id, poll_s=POLL_S):
            seen_tail[env.id] = time.perf_counter()

    readers = [threading.Thread(target=sse), threading.Thread(target=tail)]
    for t in readers:
        t.start()
    time.sleep(0.5)
    for i in [*range(n), -1]:
        e = event(run_id, i)
        with store.transaction() as tx:
            tx.append_events([e])
        committed[e.id] = time.perf_counter()
        time.sleep(0.02)
    for t in readers:
        t.join(60)
    return ([seen_sse[k] - v for k, v in committed.items()], [seen_tail[k] - v for k, v in committed.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        store = SqliteStore(path)
        store.migrate()
        token, _ = create_token(cast(TokenStore, store), Scope.SUBMIT, "bench", SystemClock())
        server = ApiServer(api_context(store, poll_s=POLL_S), port=0).start()
        url = server.url.rstrip("/")
        try:
            http_s, direct_s = bench_submit(url, token, path, args.submits)
            sse_s, tail_s = bench_freshness(url, token, store, args.events)
        finally:
            server.stop()
            store.close()
    ms = 1000
    print(f"submit, {args.submits} runs: API p50 {pct(http_s, 50) * ms:.2f} ms, p95 {pct(http_s, 95) * ms:.2f} ms; "
          f"Client on the store p50 {pct(direct_s, 50) * ms:.2f} ms, p95 {pct(direct_s, 95) * ms:.2f} ms; "
          f"ratio p50 {pct(http_s, 50) / pct(direct_s, 50):.2f}x")
    print(f"event freshness, {args.events} events, poll {POLL_S * ms:.0f} ms: SSE p50 {pct(sse_s, 50) * ms:.1f} ms, "
          f"p95 {pct(sse_s, 95) * ms:.1f} ms; in-process tail p50 {pct(tail_s, 50) * ms:.1f} ms, "
          f"p95 {pct(tail_s, 95) * ms:.1f} ms")


if __name__ == "__main__":
    main()
