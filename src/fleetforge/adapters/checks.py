"""The checks of `fleetforge doctor`: each part of a deployment probed (state store and outbox backlog,
retention readers, broker and delivery mode, ClickHouse objects and freshness, OTLP and Prometheus
endpoints, trace exporters) into `core.diagnosis.Check`s; a part not configured is SKIPped with how to
configure it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetforge.core.diagnosis import (
    BACKLOG_FAIL_S,
    BACKLOG_WARN_S,
    Check,
    Verdict,
    age_verdict,
    outbox_consumers,
    store_failure,
)
from fleetforge.domain.errors import ConfigError, FleetForgeError
from fleetforge.domain.secrets import redact_url
from fleetforge.ports.store import Store

__all__ = ["retention_checks", "run_checks"]

OK, WARN, FAIL, SKIP = Verdict.OK, Verdict.WARN, Verdict.FAIL, Verdict.SKIP
_TIMEOUT_S = 3.0


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# -- state store and outbox ------------------------------------------------------------------------------


def _latest(backend: str) -> int:
    from fleetforge.adapters.stores.sqlfiles import migrations

    package = "fleetforge.adapters.stores.postgres" if backend == "postgres" else "fleetforge.adapters.stores.sqlite"
    return max((m.version for m in migrations(package)), default=0)


def _open_store(url: str | None, data_dir: Path | None) -> tuple[Store | None, str, Check | None]:
    """(store or None, what it is, a SKIP check when not configured)."""
    if url:
        scheme = url.partition("://")[0].lower()
        if scheme in {"postgresql", "postgres"}:
            from fleetforge.adapters.stores.postgres.store import PostgresStore

            return PostgresStore(url, connect_timeout_s=_TIMEOUT_S, pool_size=1), redact_url(url), None
        from fleetforge.adapters.stores.factory import open_store

        path = url.partition("://")[2][1:] if "://" in url else url
        if not Path(path).expanduser().is_file():
            return None, url, Check("state store", FAIL, f"no SQLite store at {path}",
                                    "check --store / FLEETFORGE_STORE_URL, or create it with `fleetforge migrate`")
        return open_store(url), url, None
    db = (data_dir or Path(".fleetforge")) / "state.db"
    if data_dir is not None and db.is_file():
        from fleetforge.adapters.stores.sqlite.store import SqliteStore

        return SqliteStore(db), str(db), None
    return None, "", Check("state store", SKIP, "no --store given and no embedded store found",
                           "pass --store postgresql://user@host/db (FLEETFORGE_STORE_URL) or --data-dir DIR")


def _store_check(store: Store, what: str) -> tuple[Check, bool]:
    """(the check, whether the store is usable for outbox checks)."""
    try:
        version = store.schema_version()
    except FleetForgeError as exc:
        return store_failure(store.backend, what, _first_line(exc)), False
    latest = _latest(store.backend)
    if version < latest:
        return Check("state store", FAIL, f"{store.backend} store {what} at schema version {version}, latest "
                     f"migration is {latest}", "run `fleetforge migrate --store URL` (workers also migrate "
                     "on start)"), False
    return Check("state store", OK, f"{store.backend} store {what} reachable, schema version {version} "
                 f"(latest {latest})"), True


def _backlog_checks(store: Store, consumers: list[str], warn_s: float, fail_s: float) -> list[Check]:
    checks = []
    now_us = time.time_ns() // 1000
    for consumer in consumers:
        try:
            behind, oldest = store.outbox_backlog(consumer)
        except FleetForgeError as exc:
            checks.append(Check(f"outbox backlog: {consumer}", FAIL, _first_line(exc), "check the state store"))
            continue
        age = None if oldest is None else max(0.0, (now_us - oldest) / 1e6)
        verdict = age_verdict(age, warn_s=warn_s, fail_s=fail_s)
        detail = f"{behind} events behind" + ("" if age is None else f", oldest {age:.0f}s old")
        fix = "" if verdict is OK else (
            f"the {consumer} consumer lags or is stopped: start it (or more of it), check its logs, then "
            "watch the backlog fall with `fleetforge doctor`")
        checks.append(Check(f"outbox backlog: {consumer}", verdict, detail, fix))
    return checks


def retention_checks(store: Store, *, lag_limit_s: float | None = None, now_us: int | None = None) -> list[Check]:
    """One check per registered outbox reader: WARN when it lags beyond the retention lag limit
    (FLEETFORGE_READER_LAG_LIMIT), since it then holds back outbox pruning."""
    from dataclasses import replace

    from fleetforge.adapters.cli.retention import settings_from_env
    from fleetforge.core.retention import Retention
    from fleetforge.domain.envparse import format_duration

    try:
        settings = settings_from_env()
    except ConfigError as exc:
        return [Check("retention", FAIL, _first_line(exc), "fix the variable it names (see docs/retention.md)")]
    if lag_limit_s is not None:
        settings = replace(settings, reader_lag_limit_s=lag_limit_s)
    limit = format_duration(settings.reader_lag_limit_s)
    try:
        readers = Retention(store, settings, holder="doctor").readers(now_us)  # type: ignore[arg-type]
    except FleetForgeError as exc:
        return [Check("retention", FAIL, _first_line(exc), "check the state store")]
    if not readers:
        return [Check("retention", OK, f"no outbox reader registered: rows go after "
                      f"{format_duration(settings.outbox_window_s)} by age alone")]
    checks = []
    for r in readers:
        if r.lagging:
            checks.append(Check(f"retention reader: {r.name}", WARN,
                                f"{r.lag_s:.0f}s behind (lag limit {limit}): it holds back outbox pruning, "
                                "so the outbox grows", f"start the {r.name} reader (or more of it) so it catches "
                                f"up; if it is gone for good, `fleetforge retention --forget-reader {r.name}`"))
        else:
            checks.append(Check(f"retention reader: {r.name}", OK, f"{r.lag_s:.0f}s behind (lag limit {limit})"))
    return checks


# -- broker ----------------------------------------------------------------------------------------------


def _broker_checks(config: Path | None) -> tuple[list[Check], bool]:
    """(checks, whether a broker is configured)."""
    from fleetforge.adapters.readers.kafka.bus_config import ENV, load_bus_config
    from fleetforge.core.forwarding import DeliveryMode, config_problems

    if config is not None and not config.is_file():
        return [Check("broker", FAIL, f"config file {config} does not exist",
                      "pass a TOML file with a [bus] table (see deploy/kafka/forwarder.toml)")], True
    try:
        cfg = load_bus_config(config)
    except ConfigError as exc:
        return [Check("broker", FAIL, _first_line(exc), "fix the forwarder configuration")], True
    if not cfg.bootstrap_servers:
        return [Check("broker", SKIP, "no broker configured (embedded mode: the sink reads the outbox)",
                      f"set {ENV['bootstrap_servers']} or [bus] bootstrap_servers in --config")], False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    checks = []
    admin = AdminClient({**cfg.connection_config(), "log_level": "0", "socket.timeout.ms": "3000"})
    try:
        meta = admin.list_topics(timeout=_TIMEOUT_S)
    except KafkaException as exc:
        checks.append(Check("broker", FAIL, f"{cfg.bootstrap_servers} unreachable: {_first_line(exc)}",
                            f"start the broker or fix {ENV['bootstrap_servers']} / [bus] bootstrap_servers"))
    else:
        if cfg.topic in meta.topics:
            parts = len(meta.topics[cfg.topic].partitions)
            checks.append(Check("broker", OK, f"{cfg.bootstrap_servers}: {len(meta.brokers)} broker(s), topic "
                                f"{cfg.topic} with {parts} partitions"))
        else:
            checks.append(Check("broker", WARN, f"{cfg.bootstrap_servers} reachable; topic {cfg.topic} does not "
                                "exist yet", "start `fleetforge forwarder` (it creates the topic) or create it"))
    problems = config_problems(cfg.configured_producer_props(), cfg.consumer_props)
    if cfg.mode is DeliveryMode.AT_LEAST_ONCE:
        checks.append(Check("delivery mode", WARN, "at-least-once: a forwarder crash can publish events twice",
                            f"set {ENV['transactional_id']} (or [bus] transactional_id) for transactional, "
                            "effectively-exactly-once delivery; consumers de-duplicate on event.id either way"))
    elif problems:
        checks.append(Check("delivery mode", WARN, f"transactional, but: {problems[0]}",
                            "run `fleetforge check-transactional-forwarder --connect` and follow it"))
    else:
        checks.append(Check("delivery mode", OK, f"transactional (transactional.id {cfg.transactional_id})"))
    return checks, True


# -- ClickHouse ------------------------------------------------------------------------------------------


def _expected_objects() -> tuple[list[str], list[str], list[str]]:
    from fleetforge.adapters.readers.clickhouse.schema import derived_tables, view_definitions, views_sql

    raw = ["telemetry.run_events", "telemetry.step_events"]
    views = [v.view for v in view_definitions(views_sql())]
    return raw, derived_tables(), views


def _clickhouse_checks(url: str | None, data_dir: Path | None, store: Store | None, consumer: str,
                       warn_s: float, fail_s: float) -> list[Check]:
    from fleetforge.adapters.readers.clickhouse.backends import chdb_dir, open_analytics

    if not url:
        folder = chdb_dir(data_dir) if data_dir is not None else None
        if folder is None or not folder.is_dir():
            where = f" (nothing at {folder})" if folder is not None else ""
            return [Check("clickhouse", SKIP, f"no analytics store configured{where}",
                          "pass --clickhouse-url (FLEETFORGE_CLICKHOUSE_URL) or the --data-dir of the sink")]
    where = redact_url(url) if url else f"chDB at {chdb_dir(data_dir)}"
    try:
        analytics = open_analytics(data_dir=data_dir, clickhouse_url=url)
    except FleetForgeError as exc:
        if not url and "owned by one process" in str(exc):
            return [Check("clickhouse", WARN, f"{where} is open in another process (the sink): doctor cannot "
                          "read it", "query it through the process that owns it, or point doctor at a "
                          "ClickHouse server with --clickhouse-url")]
        return [Check("clickhouse", FAIL, f"{where} unreachable: {_first_line(exc)}",
                      "start ClickHouse or fix --clickhouse-url / FLEETFORGE_CLICKHOUSE_URL")]
    try:
        return _clickhouse_contents(analytics, where, store, consumer, warn_s, fail_s)
    except FleetForgeError as exc:
        return [Check("clickhouse", FAIL, f"{where}: {_first_line(exc)}",
                      "check the server and the user's grants on database telemetry")]
    finally:
        analytics.close()


def _clickhouse_contents(analytics: Any, where: str, store: Store | None, consumer: str, warn_s: float,
                         fail_s: float) -> list[Check]:
    rows = analytics.rows("SELECT name FROM system.tables WHERE database = 'telemetry'")
    present = {f"telemetry.{n}" for n, in rows}
    raw, derived, views = _expected_objects()
    checks = [Check("clickhouse", OK, f"{where} reachable")]
    apply = "run `fleetforge analytics apply` (same --data-dir / --clickhouse-url), then " \
            "`fleetforge analytics backfill` for the derived tables"
    for label, names in (("raw tables", raw), ("derived tables", derived), ("materialized views", views)):
        missing = [n for n in names if n not in present]
        if missing:
            checks.append(Check(f"clickhouse {label}", FAIL, f"missing: {', '.join(missing)}", apply))
        else:
            checks.append(Check(f"clickhouse {label}", OK, f"{len(names)} present"))
    if any(c.verdict is FAIL for c in checks) or store is None:
        if store is None and not any(c.verdict is FAIL for c in checks):
            checks.append(Check("clickhouse freshness", SKIP, "no state store to compare with",
                                "pass --store so the newest outbox row can be compared"))
        return checks
    (newest_ch,), = analytics.rows(
        "SELECT toUnixTimestamp64Micro(greatest((SELECT max(occurred_at) FROM telemetry.run_events), "
        "(SELECT max(occurred_at) FROM telemetry.step_events)))")
    newest_outbox = _newest_outbox_us(store, consumer)
    if newest_outbox is None:
        checks.append(Check("clickhouse freshness", OK, "the outbox is empty"))
        return checks
    lag = max(0.0, (newest_outbox - int(newest_ch or 0)) / 1e6) if newest_ch else None
    if lag is None:
        checks.append(Check("clickhouse freshness", FAIL, "no events stored while the outbox has some",
                            "start `fleetforge sink` (with --source kafka in distributed mode)"))
        return checks
    verdict = age_verdict(lag, warn_s=warn_s, fail_s=fail_s)
    checks.append(Check("clickhouse freshness", verdict, f"newest stored event {lag:.0f}s behind the newest "
                        "outbox row", "" if verdict is OK else "check that the sink runs and keeps up "
                        "(and, in distributed mode, the forwarder)"))
    return checks


def _newest_outbox_us(store: Store, consumer: str) -> int | None:
    """occurred_us of the newest outbox event, read from just before `consumer`'s cursor (bounded by its backlog)."""
    from fleetforge.domain.envelope import Envelope

    tx, seq = store.get_cursor(consumer)
    position = (tx, seq - 1) if (tx, seq) != (0, 0) else (0, 0)
    last = None
    while rows := store.read_outbox(position, 5000):
        last, position = rows[-1], rows[-1].position
    return None if last is None else Envelope.from_json(last.envelope).occurred_us


# -- telemetry endpoints and exporters -----------------------------------------------------------------


def _otlp_check() -> Check:
    var = next((v for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") if os.environ.get(v, "").strip()), None)
    if var is None:
        return Check("otlp endpoint", SKIP, "OTEL_EXPORTER_OTLP_ENDPOINT is not set",
                     "set OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 to send spans and metrics to a collector")
    raw = os.environ[var].strip()
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 4317)
    except ValueError:
        return Check("otlp endpoint", FAIL, f"{var} is not a URL", "use a URL such as http://localhost:4317")
    shown = f"{host}:{port} ({var})"
    try:
        socket.create_connection((host, port), timeout=_TIMEOUT_S).close()
    except OSError as exc:
        return Check("otlp endpoint", FAIL, f"{shown}: {exc.strerror or type(exc).__name__}",
                     "start the OpenTelemetry collector (`just observability`) or fix " + var)
    return Check("otlp endpoint", OK, f"{shown} accepts connections")


def _prometheus_check() -> Check:
    import httpx

    from fleetforge.adapters.readers.telemetry.settings import TelemetrySettings

    try:
        settings = TelemetrySettings.from_env()
    except ConfigError as exc:
        return Check("prometheus endpoint", FAIL, _first_line(exc), "fix the variable it names")
    if settings.prometheus_port == 0:
        return Check("prometheus endpoint", SKIP, "OTEL_EXPORTER_PROMETHEUS_PORT=0 (not served)",
                     "set OTEL_EXPORTER_PROMETHEUS_PORT to the port Prometheus scrapes (default 9464)")
    url = f"http://{settings.prometheus_host}:{settings.prometheus_port}/metrics"
    try:
        resp = httpx.get(url, timeout=_TIMEOUT_S)
    except httpx.ConnectError:
        return Check("prometheus endpoint", WARN, f"nothing listens at {url}",
                     "start a fleetforge worker/forwarder here (they serve /metrics), or set "
                     "OTEL_EXPORTER_PROMETHEUS_HOST/PORT to where one runs")
    except httpx.HTTPError as exc:
        return Check("prometheus endpoint", FAIL, f"{url}: {type(exc).__name__}",
                     "check the process serving it")
    if resp.status_code != 200:
        return Check("prometheus endpoint", FAIL, f"{url} answered HTTP {resp.status_code}",
                     "point OTEL_EXPORTER_PROMETHEUS_HOST/PORT at a fleetforge process")
    series = sum(1 for line in resp.text.splitlines() if line.startswith("fleetforge_"))
    return Check("prometheus endpoint", OK, f"{url} serves metrics ({series} fleetforge series)")


def _exporter_checks() -> tuple[list[Check], list[str]]:
    from fleetforge.adapters.readers.traces.discovery import discover

    found = discover(os.environ)
    if not found.requested:
        return [Check("trace exporters", SKIP, "FLEETFORGE_TRACE_EXPORTERS is not set",
                      "set FLEETFORGE_TRACE_EXPORTERS=langsmith,langfuse,phoenix with their manifests under "
                      "plugins/exporters/ and credentials in the environment")], []
    checks = [Check(f"exporter {c.name}", OK, f"manifest {c.manifest}, endpoint {c.base_url}")
              for c in found.active]
    for s in found.skipped:
        checks.append(Check(f"exporter {s.name}", FAIL if s.warning else SKIP, s.reason,
                            "fix the manifest or set the credentials it names" if s.warning
                            else "set enabled = true in the manifest to turn it on"))
    return checks, [c.name for c in found.active]


def run_checks(*, store_url: str | None, data_dir: Path | None, clickhouse_url: str | None,
               config: Path | None, warn_s: float = BACKLOG_WARN_S, fail_s: float = BACKLOG_FAIL_S) -> list[Check]:
    """Every check, in display order."""
    checks: list[Check] = []
    store, what, skipped = _open_store(store_url, data_dir)
    usable = False
    if skipped is not None:
        checks.append(skipped)
    elif store is not None:
        check, usable = _store_check(store, what)
        checks.append(check)
    broker, bus = _broker_checks(config)
    exporters, active = _exporter_checks()
    try:
        if usable and store is not None:
            checks += _backlog_checks(store, outbox_consumers(bus, active), warn_s, fail_s)
            checks += retention_checks(store)
        checks += broker
        checks += _clickhouse_checks(clickhouse_url, data_dir, store if usable else None,
                                     outbox_consumers(bus, [])[0], warn_s, fail_s)
    finally:
        if store is not None:
            store.close()
    checks.append(_otlp_check())
    checks.append(_prometheus_check())
    checks += exporters
    return checks
