"""Three `fleetforge worker` processes on PostgreSQL (a fresh database), a real Prometheus scraping all three:
the guide's alert expressions evaluate over the fleet, and `sum(fleetforge_step_retries_total)` across the
targets equals the ground truth from the outbox, also after the worker holding the telemetry lease is
SIGKILLed mid-fleet and another takes over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.domain.names import EventKind as K
from tests.conftest import PG_DSN, need_postgres
from tests.integration.test_prometheus import DEPLOY, GUIDE_EXPRESSIONS, PROMETHEUS, _free_port, _wait
from tests.integration.test_worker_kill import REPO, _cli
from tests.support import need
from tests.unit.test_telemetry_metrics import llm

pytestmark = pytest.mark.postgres

TELEMETRY_LEASE_MS = 3000
STEP_LEASE_MS = 2000
DRAIN = {"workspace": "acme", "app": "drain", "seed": 11, "budget": {"tokens": 400},
         "steps": [llm("big", prompt="x" * 1000, output_tokens=100), llm("next", "big", prompt="x" * 1000)]}
ROOMY = {"workspace": "acme", "app": "roomy", "budget": {"tokens": 100_000},
         "steps": [llm("a"), llm("b", "a"), llm("c", "b")]}


def _flaky(seed: int) -> dict[str, Any]:
    return {"workspace": "acme", "app": "flaky", "seed": seed, "budget": {"tokens": 1_000_000},
            "steps": [llm(f"f{i}", fail_rate=0.5, failure_kinds=["http_5xx"])
                      | {"execution": {"max_attempts": 4, "retry_backoff_ms": 5}} for i in range(3)]}


@pytest.fixture
def database() -> Iterator[str]:
    need_postgres()
    dbname = f"fft_tel_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield urlsplit(PG_DSN)._replace(path=f"/{dbname}").geturl()
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


class Prometheus:
    def __init__(self, api: str) -> None:
        self.api = api

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.api}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        got = self.query(expr)
        return float(got[0]["value"][1]) if got else None


def _start_prometheus(tmp: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], Prometheus]:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
    config.pop("rule_files", None)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (tmp / "prometheus.log").open("w")
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    _wait(lambda: httpx.get(f"{api}/-/ready", timeout=2).status_code == 200, 30, "Prometheus ready",
          tmp / "prometheus.log")
    return proc, Prometheus(api)


def _fleet_series(port: int) -> bool:
    """Whether the target on `port` exposes the fleet's series (it holds the telemetry lease)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
    except httpx.HTTPError:
        return False
    return "fleetforge_queue_lag_seconds_bucket" in text


def submit_specs(store: PostgresStore, specs: list[dict[str, Any]], *, until: threading.Event | None = None,
                 every_s: float = 0.1) -> None:
    """Submit `specs`; with `until`, keep submitting flaky runs every `every_s` until it is set."""

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            runtime = build_runtime(store, client)
            for spec in specs:
                runtime.submit(spec)
            seed = 1000
            while until is not None and not until.wait(every_s):
                runtime.submit(_flaky(seed))
                seed += 1

    asyncio.run(go())


def _truth(store: PostgresStore) -> int:
    return sum(1 for r in store.iter_outbox() if r.kind == K.STEP_RETRY_SCHEDULED)


def test_three_workers_publish_the_fleet_once_across_a_takeover(database: str, tmp_path: Path) -> None:
    need(PROMETHEUS is not None, "prometheus (Debian package prometheus)")
    store = PostgresStore(database)
    store.migrate()
    submit_specs(store, [DRAIN, ROOMY] + [_flaky(s) for s in range(20)])
    enough = threading.Event()  # the fleet keeps getting runs until after the takeover
    feeder = threading.Thread(target=submit_specs, args=(store, []), kwargs={"until": enough}, daemon=True)
    feeder.start()
    ports = [_free_port() for _ in range(3)]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    prom: subprocess.Popen[bytes] | None = None
    try:
        for i, port in enumerate(ports):
            env = {**os.environ, "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
                   "FLEETFORGE_TELEMETRY_LEASE_MS": str(TELEMETRY_LEASE_MS),
                   "FLEETFORGE_LEASE_MS": str(STEP_LEASE_MS), "FLEETFORGE_RETENTION": "false"}
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            with (tmp_path / f"w{i}.out").open("wb") as out:
                procs[port] = subprocess.Popen(
                    [*_cli(), "worker", "--store", database, "--id", f"w{i}", "--concurrency", "2"],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        prom, api = _start_prometheus(tmp_path, [f"127.0.0.1:{p}" for p in ports])

        # 1. The guide's three expressions evaluate over the fleet, while it runs.
        for expr in GUIDE_EXPRESSIONS:
            _wait(lambda e=expr: api.query(e), 60, f"an answer to {expr}", tmp_path / "w0.out")
        holders = [p for p in ports if _fleet_series(p)]
        assert len(holders) == 1, holders  # exactly one target publishes the fleet's series

        # 2. The counter never runs ahead of the truth (a double count would).
        seen = api.scalar("sum(fleetforge_step_retries_total)") or 0.0
        assert 0 < seen <= _truth(store)
        # the fleet is still running at the kill: the feeder keeps submitting runs, and one is open
        assert feeder.is_alive()
        _wait(lambda: store.count_open_runs() > 0, 10, "an open run before the kill (else the test proves nothing)")

        # 3. SIGKILL the holder mid-fleet: another takes over within the lease time.
        victim = holders[0]
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(30)
        killed = time.monotonic()
        rest = [p for p in ports if p != victim]
        _wait(lambda: any(_fleet_series(p) for p in rest), 2 * TELEMETRY_LEASE_MS / 1000 + 5, "a takeover")
        took_s = time.monotonic() - killed
        assert took_s <= 2 * TELEMETRY_LEASE_MS / 1000 + 5
        assert sum(_fleet_series(p) for p in rest) == 1
        time.sleep(3)
        enough.set()
        feeder.join(30)

        # 4. The fleet ends; the sum across every scraped target equals the truth exactly.
        _wait(lambda: store.count_open_runs() == 0, 240, "the fleet to finish", tmp_path / "w1.out")
        truth = _truth(store)

        def settled() -> bool:
            got = api.scalar("sum(fleetforge_step_retries_total)")
            assert got is None or got <= truth, f"double count: {got} > {truth}"
            return got == truth

        _wait(settled, 60, f"sum(fleetforge_step_retries_total) == {truth}")
        assert api.scalar("count(fleetforge_step_retries_total)") is not None
        started = sum(1 for r in store.iter_outbox() if r.kind == K.STEP_STARTED)

        def lag_settled() -> bool:  # its own series: it may be a scrape behind the retries
            got = api.scalar("sum(fleetforge_queue_lag_seconds_count)")
            assert got is None or got <= started, f"double count: {got} > {started}"
            return got == started

        _wait(lag_settled, 60, f"sum(fleetforge_queue_lag_seconds_count) == {started}")
        for expr in GUIDE_EXPRESSIONS:
            assert api.query(expr), expr
    finally:
        enough.set()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if prom is not None:
            prom.terminate()
            prom.wait(15)
        store.close()
