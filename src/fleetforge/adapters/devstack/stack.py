"""The embedded observability stack: one process owning a chDB data dir and serving

- a read-only ClickHouse HTTP interface (default 127.0.0.1:8123; see chhttp, chrunner, chguard),
- an OTLP receiver, gRPC :4317 and HTTP :4318, writing the collector exporter's otel_* tables,
- the received metrics for Prometheus on :9464,
- and, when the FleetForge state store has an outbox, the analytics sink streaming it into the raw and
  derived tables (the same as `fleetforge sink`), so the dashboards stay live.

It writes `<stack dir>/observability.json` (pid, addresses) while it runs, for `status` and `down`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry

from fleetforge.adapters.devstack.chguard import Limits
from fleetforge.adapters.devstack.chhttp import ClickHouseHttpServer, EndpointConfig
from fleetforge.adapters.devstack.chrunner import QueryRunner
from fleetforge.adapters.devstack.otlp_receiver import OtelWriter, OtlpGrpcServer, OtlpHttpServer, OtlpSink
from fleetforge.adapters.devstack.prombridge import PrometheusBridge
from fleetforge.adapters.readers.clickhouse.embedded import EmbeddedAnalytics
from fleetforge.adapters.readers.telemetry.endpoints import PrometheusServer
from fleetforge.adapters.readers.telemetry.service import RunningTelemetry, start_telemetry
from fleetforge.adapters.stores.sqlfiles import package_text, split_statements
from fleetforge.ports.store import Store

__all__ = ["OTEL_TABLES", "SINK_CONSUMER", "STATE_FILE", "EmbeddedStack", "StackConfig", "read_state"]

log = logging.getLogger("fleetforge.observability")
STATE_FILE: Final = "observability.json"
SINK_CONSUMER: Final = "observability-stack"
STANDBY_GRACE_S: Final = 10.0
"""How long the stack waits, once it follows a store, before its standby telemetry reader asks for the lease."""
OTEL_TABLES: Final = (
    "otel_traces",
    "otel_logs",
    "otel_metrics_gauge",
    "otel_metrics_sum",
    "otel_metrics_histogram",
    "otel_metrics_exp_histogram",
    "otel_metrics_summary",
)


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Where the stack keeps its data and where it listens."""

    stack_dir: Path  # chDB under stack_dir/clickhouse, the state file, the log
    store_url: str | None = None  # the outbox to stream; None: no sink
    host: str = "127.0.0.1"
    http_port: int = 8123
    otlp_grpc_port: int = 4317
    otlp_http_port: int = 4318
    prometheus_port: int = 9464
    allow_writes: bool = False
    password: str | None = None
    metric_expiry_s: float = 300.0
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides IP literals and localhost
    query_timeout_s: int = 30  # max_execution_time of every query on the ClickHouse endpoint
    max_result_bytes: int = 256 * 1024 * 1024

    @property
    def chdb_dir(self) -> Path:
        return self.stack_dir / "clickhouse"


def otel_tables_sql() -> str:
    return package_text("fleetforge.adapters.devstack", "otel_tables.sql")


def read_state(stack_dir: Path) -> dict[str, Any] | None:
    """The state file of a stack started under `stack_dir`, or None."""
    try:
        doc = json.loads((stack_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class _OutboxFollower:
    """Streams a SQLite or PostgreSQL outbox into chDB; reopens a SQLite file replaced under it (the
    demo starts from a fresh state.db)."""

    def __init__(self, analytics: EmbeddedAnalytics, store_url: str) -> None:
        self.analytics = analytics
        self.store_url = store_url
        self.path = Path(store_url.removeprefix("sqlite:///")) if store_url.startswith("sqlite:///") else None
        self._identity: tuple[int, int] | None = None
        self._store: Store | None = None
        self._telemetry: RunningTelemetry | None = None
        self._standby_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="outbox-follower", daemon=True)
        self.error = ""

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path) if self.path else None
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if st else (0, 0)

    def _open(self) -> None:
        from fleetforge.adapters.stores.factory import open_store

        store = open_store(self.store_url)
        if store.schema_version() <= 0:  # not migrated yet: its owner has not started
            store.close()
            return
        self._store = store
        self.analytics.start(store)
        # the telemetry reader beside it starts after a grace period, so the process that just migrated the
        # store (a worker, the demo) takes the lease first and exports with its own settings
        self._standby_at = time.monotonic() + STANDBY_GRACE_S
        self.error = ""
        log.info("streaming the outbox of %s into ClickHouse", self.store_url)

    def _close(self) -> None:
        if self._telemetry is not None:
            self._telemetry.stop()
            self._telemetry = None
        self.analytics.stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            identity = self._file_identity()
            try:
                if identity is not None and (self._store is None or identity != self._identity):
                    if self._store is not None:
                        log.info("%s was replaced; following the new file", self.path)
                        self._close()
                    self._identity = identity
                    self._open()
            except Exception as exc:  # a store that cannot be opened yet: try again later
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.debug("outbox not followed yet: %s", self.error)
            if self._store is not None and self._telemetry is None and time.monotonic() >= self._standby_at:
                # a standby: publishes the fleet's metrics while no worker holds the telemetry lease
                self._telemetry = start_telemetry(self._store, f"observability-{os.getpid()}",
                                                  service_name="fleetforge-stack")
            self._stop.wait(1.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._close()

    @property
    def following(self) -> bool:
        return self._store is not None


class EmbeddedStack:
    """Start with `start()`, stop with `stop()` (devstack.control stops one in another process)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._parts: list[Any] = []
        self.analytics: EmbeddedAnalytics | None = None
        self.follower: _OutboxFollower | None = None
        self.clickhouse: ClickHouseHttpServer | None = None
        self.writer: OtelWriter | None = None
        self.bridge = PrometheusBridge(config.metric_expiry_s)
        self.addresses: dict[str, str] = {}

    def start(self) -> EmbeddedStack:
        cfg = self.config
        cfg.stack_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.analytics = EmbeddedAnalytics(cfg.chdb_dir, consumer=SINK_CONSUMER)
            self.analytics.apply()
            for statement in split_statements(otel_tables_sql()):
                self.analytics.analytics.execute(statement)
            limits = Limits(max_execution_time=cfg.query_timeout_s, max_result_bytes=cfg.max_result_bytes)
            runner = QueryRunner(str(cfg.chdb_dir), allow_writes=cfg.allow_writes, limits=limits)
            runner.probe()
            self.writer = OtelWriter(str(cfg.chdb_dir))
            sink = OtlpSink(self.writer, self.bridge)
            self.clickhouse = ClickHouseHttpServer(
                runner,
                EndpointConfig(cfg.allow_writes, password=cfg.password),
                cfg.host,
                cfg.http_port,
                allowed_hosts=cfg.allowed_hosts,
            ).start()
            self._parts.append(self.clickhouse)
            grpc_server = OtlpGrpcServer(sink, cfg.host, cfg.otlp_grpc_port).start()
            self._parts.append(grpc_server)
            http_server = OtlpHttpServer(sink, cfg.host, cfg.otlp_http_port, cfg.allowed_hosts).start()
            self._parts.append(http_server)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(self.bridge)
            prometheus = PrometheusServer.start(registry, cfg.host, cfg.prometheus_port)
            self._parts.append(prometheus)
            if cfg.store_url:
                self.follower = _OutboxFollower(self.analytics, cfg.store_url)
                self.follower.start()
        except BaseException:
            self.stop()
            raise
        self.addresses = {
            "clickhouse_http": _url(*self.clickhouse.address),
            "otlp_grpc": _url(*grpc_server.address),
            "otlp_http": _url(*http_server.address),
            "prometheus": _url(*prometheus.address) + "metrics",
        }
        self._write_state()
        return self

    def _write_state(self) -> None:
        doc = {
            "pid": os.getpid(),
            "started_at": time.time(),
            "mode": "embedded",
            "addresses": self.addresses,
            "config": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in asdict(self.config).items()
                if k != "password"
            },
        }
        tmp = self.config.stack_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        tmp.replace(self.config.stack_dir / STATE_FILE)

    def stop(self) -> None:
        """Stop serving, drain the outbox sink, release the data dir."""
        for part in reversed(self._parts):
            try:
                part.stop()
            except Exception as exc:
                log.warning("stopping %s: %s", type(part).__name__, exc)
        self._parts.clear()
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.analytics is not None:
            self.analytics.close()
            self.analytics = None
        state = self.config.stack_dir / STATE_FILE
        current = read_state(self.config.stack_dir)
        if current and current.get("pid") == os.getpid():
            state.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        """Counters for the log line printed while running."""
        return {
            "queries": self.clickhouse.queries if self.clickhouse else 0,
            "otel_rows": dict(self.writer.rows) if self.writer else {},
            "following_outbox": bool(self.follower and self.follower.following),
        }


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
