"""Commands of the Kafka forwarder: `forwarder`, `check-transactional-forwarder`, `delivery-mode`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, err, guard, out, print_json
from fleetforge.adapters.process import stop_event
from fleetforge.adapters.readers.kafka.bus_config import ENV, BusConfig, load_bus_config
from fleetforge.core.forwarding import BROKER_DEFAULT_MAX_TXN_TIMEOUT_MS, DeliveryMode, config_problems
from fleetforge.domain.errors import ConfigError

__all__ = ["check_config", "register"]

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar="FLEETFORGE_KAFKA_CONFIG", show_default=False,
                 help="TOML file with a [bus] table (see deploy/kafka/forwarder.toml). "
                      f"{ENV['bootstrap_servers']}, {ENV['topic']} and {ENV['transactional_id']} override it."),
]
JsonOpt = Annotated[bool, typer.Option("--json", envvar="FLEETFORGE_JSON_OUTPUT",
                                       help="Print one JSON object instead of text.")]


def _load(config: Path | None) -> BusConfig:
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {str(config)!r} does not exist; pass a TOML file with a [bus] table "
                          "(see deploy/kafka/forwarder.toml)")
    return load_bus_config(config)


def _broker_max_txn_timeout(cfg: BusConfig) -> tuple[int | None, str, bool]:
    """(the broker's transaction.max.timeout.ms or None, where it came from, whether the broker answered)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

    conf: dict[str, str | int | float | bool] = {**cfg.connection_config()}
    admin = AdminClient(conf)
    try:
        brokers = admin.list_topics(timeout=10).brokers
    except KafkaException as exc:
        return None, f"unreachable: {exc.args[0]}", False
    try:
        resource = ConfigResource(ResourceType.BROKER, str(min(brokers)))
        entries = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
        entry = entries.get("transaction.max.timeout.ms")
        if entry is None or entry.value is None:
            return None, "the broker did not report transaction.max.timeout.ms", True
        return int(entry.value), "reported by the broker", True
    except (KafkaException, ValueError, TypeError) as exc:
        return None, f"the broker did not report it ({type(exc).__name__})", True


def _init_transactions(cfg: BusConfig) -> str | None:
    """None when init_transactions succeeds against the broker, else the error."""
    from confluent_kafka import KafkaException, Producer

    conf, _ = cfg.producer_config()
    try:
        producer = Producer(conf)
        producer.init_transactions(15)
        producer.flush(0)
    except KafkaException as exc:
        return str(exc.args[0]) if exc.args else str(exc)
    return None


def check_config(cfg: BusConfig, *, connect: bool) -> dict[str, Any]:
    """The smoke test: mode, each check's outcome, problems; `ok` only when transactional and sound."""
    checks: list[dict[str, Any]] = []
    max_timeout, source = BROKER_DEFAULT_MAX_TXN_TIMEOUT_MS, "Kafka's default; --connect asks the broker"
    reachable = True
    if connect:
        if not cfg.bootstrap_servers:
            raise ConfigError(f"--connect needs bootstrap servers: set [bus] bootstrap_servers or "
                              f"{ENV['bootstrap_servers']}")
        found, why, reachable = _broker_max_txn_timeout(cfg)
        if found is not None:
            max_timeout, source = found, why
        else:
            source = f"Kafka's default; {why}" if reachable else "Kafka's default"
        if not reachable:
            checks.append({"check": f"broker reachable at {cfg.bootstrap_servers}", "ok": False, "detail": why})
    problems = [] if reachable else [
        f"broker at {cfg.bootstrap_servers} did not answer: check [bus] bootstrap_servers "
        f"({ENV['bootstrap_servers']}) and the network"]
    problems += config_problems(cfg.configured_producer_props(), cfg.consumer_props,
                               broker_max_txn_timeout_ms=max_timeout)
    idem = cfg.client_props.get("enable.idempotence", "true (set by the forwarder)")
    acks = cfg.client_props.get("acks", "all (set by the forwarder)")
    for name, prefixes, detail in (
        ("transactional.id detected", ("transactional.id",), cfg.transactional_id or "not set"),
        ("idempotent producer", ("enable.idempotence", "acks", "max.in.flight", "retries"),
         f"enable.idempotence={idem}, acks={acks}"),
        ("transaction.timeout.ms within the broker maximum", ("transaction.timeout.ms",),
         f"{cfg.client_props.get('transaction.timeout.ms', '60000 (librdkafka default)')} <= "
         f"transaction.max.timeout.ms {max_timeout} ({source})"),
        ("consumers read committed data", ("consumer",),
         f"isolation.level={cfg.consumer_props.get('isolation.level', 'read_committed (default)')}"),
    ):
        ok = not any(p.startswith(prefixes) for p in problems)  # each problem starts with its setting
        checks.append({"check": name, "ok": ok, "detail": detail})
    if connect and cfg.mode is DeliveryMode.TRANSACTIONAL and not problems:
        error = _init_transactions(cfg)
        checks.append({"check": f"init_transactions against {cfg.bootstrap_servers}", "ok": error is None,
                       "detail": error or "succeeded"})
        if error is not None:
            problems.append(f"init_transactions failed against {cfg.bootstrap_servers}: {error}. Check the "
                            "broker address, that transactions are enabled, and the principal's "
                            "TransactionalId ACLs")
    ok = cfg.mode is DeliveryMode.TRANSACTIONAL and not problems
    return {"mode": str(cfg.mode), "transactional": ok, "transactional_id": cfg.transactional_id,
            "source": cfg.source, "connected": connect, "checks": checks, "problems": problems}


def register(app: typer.Typer) -> None:
    """Add the forwarder commands to `app`."""

    @app.command("forwarder")
    def forwarder(
        config: ConfigOpt = None,
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        until_idle: Annotated[bool, typer.Option("--until-idle", envvar="FLEETFORGE_FORWARDER_UNTIL_IDLE",
                                                 help="Exit once the outbox is drained.")] = False,
        metrics: Annotated[bool, typer.Option("--metrics/--no-metrics", envvar="FLEETFORGE_FORWARDER_METRICS",
                                              help="Serve Prometheus metrics on OTEL_EXPORTER_PROMETHEUS_HOST/"
                                                   "PORT (default 127.0.0.1:9464).")] = True,
    ) -> None:
        """Relay outbox events to Kafka until interrupted (SIGINT/SIGTERM stop it cleanly)."""
        from fleetforge.adapters.cli.wiring import store_for
        from fleetforge.adapters.readers.kafka.forwarder import Forwarder
        from fleetforge.adapters.readers.telemetry.providers import Telemetry

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        with guard():
            cfg = _load(config)
            st = store_for(store, data_dir)
            telemetry = Telemetry.from_env(service_name="fleetforge-forwarder")
            if metrics:
                try:
                    telemetry.start_prometheus()
                except ConfigError as exc:
                    err.print(f"warning: metrics not served: {exc}", highlight=False)
            with stop_event() as stop:
                fwd = Forwarder(st, cfg, meter_provider=telemetry.meter_provider,
                                delivery_metrics=telemetry.delivery)
                try:
                    stats = fwd.run(stop, until_idle=until_idle)
                finally:
                    telemetry.shutdown()
                    st.close()
        out.print(f"forwarded {stats.sent} events in {stats.batches} batches "
                  f"({stats.failed} events in failed batches, {stats.retried} events resent)", highlight=False)

    @app.command("check-transactional-forwarder")
    def check_transactional_forwarder(
        config: ConfigOpt = None,
        connect: Annotated[bool, typer.Option("--connect", envvar="FLEETFORGE_CHECK_CONNECT",
                                              help="Also call init_transactions against the broker and ask it "
                                                   "for transaction.max.timeout.ms.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Smoke-test the forwarder configuration: exit 0 only when it is transactional and sound."""
        with guard():
            cfg = _load(config)
            report = check_config(cfg, connect=connect)
        if as_json:
            print_json(report)
        else:
            out.print(f"delivery mode: {report['mode']} (settings from {cfg.source})", highlight=False)
            for c in report["checks"]:
                mark = "[green]ok[/]  " if c["ok"] else "[red]FAIL[/]"
                out.print(f"  {mark} {escape(c['check'])}: {escape(str(c['detail']))}", highlight=False)
            for p in report["problems"]:
                err.print(f"[red]problem:[/] {escape(p)}", highlight=False)
            if report["transactional"]:
                out.print("[green]OK[/]: transactional forwarder configured (effectively-exactly-once with "
                          "read_committed consumers that de-duplicate on event.id)", highlight=False)
        if not report["transactional"]:
            if not as_json:
                die(f"{len(report['problems'])} problem(s): the forwarder is not transactional-ready; "
                    "fix them and run the check again")
            raise typer.Exit(1)

    @app.command("delivery-mode")
    def delivery_mode(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Print the forwarder's effective delivery mode and settings (secrets redacted)."""
        with guard():
            cfg = _load(config)
        summary = cfg.summary()
        if as_json:
            print_json(summary)
            return
        out.print(f"delivery mode: {summary['mode']}", highlight=False)
        if cfg.mode is DeliveryMode.AT_LEAST_ONCE:
            out.print("  consumers must treat events idempotently (de-duplicate on event.id); set a "
                      "transactional.id for effectively-exactly-once", highlight=False)
        for key, value in summary.items():
            if key != "mode":
                out.print(f"  {key}: {escape(str(value))}", highlight=False)
