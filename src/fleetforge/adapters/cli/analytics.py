"""Analytics commands: `analytics apply`, `analytics backfill`, `sql` and `sink`."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, err, guard, out
from fleetforge.adapters.process import stop_event
from fleetforge.adapters.readers.clickhouse.backends import open_analytics
from fleetforge.adapters.readers.clickhouse.schema import apply_schema, backfill
from fleetforge.adapters.readers.clickhouse.sink import Sink, SinkConfig, SinkStats
from fleetforge.adapters.readers.clickhouse.sink_reader import DEFAULT_CONSUMER, OutboxSink
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.domain.errors import ConfigError
from fleetforge.ports.analytics import AnalyticsStore, EventSource

__all__ = ["register"]

analytics_app = typer.Typer(help="ClickHouse analytics: schema, derived tables and backfill.", no_args_is_help=True)

UrlOpt = Annotated[
    str | None,
    typer.Option("--clickhouse-url", envvar="FLEETFORGE_CLICKHOUSE_URL", show_default=False,
                 help="ClickHouse server URL, http[s]://user:password@host:8123. Default: embedded chDB "
                      "under --data-dir."),
]
FORMATS = ("PrettyCompact", "Pretty", "PrettyCompactMonoBlock", "CSV", "CSVWithNames", "TSV",
           "TSVWithNames", "TabSeparated", "JSONEachRow", "JSON", "JSONCompact", "Vertical", "Markdown")


@contextmanager
def _store(ctx: typer.Context, data_dir: Path | None, url: str | None) -> Iterator[AnalyticsStore]:
    both = all(getattr(ctx.get_parameter_source(p), "name", "") == "COMMANDLINE"
               for p in ("data_dir", "clickhouse_url"))
    store = open_analytics(data_dir=data_dir, clickhouse_url=url, explicit_data_dir=both)
    try:
        yield store
    finally:
        store.close()


def _since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since: got {value!r}, expected an ISO 8601 time such as 2026-01-31T12:00:00Z "
                          "(UTC when no offset is given)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@analytics_app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    data_dir: DataDirOpt = None,
    clickhouse_url: UrlOpt = None,
    rebuild_changed: Annotated[bool, typer.Option(
        "--rebuild-changed", envvar="FLEETFORGE_ANALYTICS_REBUILD_CHANGED",
        help="Drop and re-create the derived tables and views whose definition differs from "
             "materialized_views.sql, then backfill those tables (stop the sink first).")] = False,
) -> None:
    """Create or upgrade the analytics schema: migrations, then materialized_views.sql."""
    with guard(), _store(ctx, data_dir, clickhouse_url) as store:
        report = apply_schema(store, rebuild_changed=rebuild_changed)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    done = ", ".join(report.applied) or "none pending"
    out.print(f"schema version {report.version} (migrations applied: {done}); {report.views} materialized "
              "views in place")
    if report.rebuilt:
        out.print(f"rebuilt and backfilled: {', '.join(report.rebuilt)} (changed: {', '.join(report.changed)})")


@analytics_app.command("backfill")
def backfill_cmd(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(envvar="FLEETFORGE_BACKFILL_SINCE", show_default=False,
                                              help="Re-derive from this UTC time on (ISO 8601). "
                                                   "Default: everything.")] = None,
    data_dir: DataDirOpt = None,
    clickhouse_url: UrlOpt = None,
) -> None:
    """Re-derive the six derived tables from the raw event tables (safe to run again)."""
    with guard():
        start = _since(since)
        with _store(ctx, data_dir, clickhouse_url) as store:
            apply_schema(store)
            report = backfill(store, start)
    for table, rows in report.tables.items():
        out.print(f"{table}: {rows} rows")


def _sql(ctx: typer.Context, query: str, data_dir: Path | None, url: str | None, fmt: str) -> None:
    if not query.strip():
        die("QUERY is empty: pass a SQL statement, e.g. fleetforge sql \"SELECT count() FROM "
            "telemetry.step_events\"", 2)
    with guard(), _store(ctx, data_dir, url) as store:
        text = store.text(query, fmt)
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")


def _kafka_source(kind: str, bootstrap: str | None, topic: str, group: str) -> EventSource:
    if kind == "kafka":
        if not bootstrap:
            raise ConfigError("--source kafka needs --bootstrap-servers (or FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS), "
                              "e.g. localhost:9092")
        import os

        from fleetforge.adapters.readers.clickhouse.kafka_source import KafkaSource
        from fleetforge.adapters.readers.kafka.bus_config import load_bus_config

        # consumer settings ([bus.consumer_props]) from the forwarder's TOML, when one is configured
        props = load_bus_config(os.environ.get("FLEETFORGE_KAFKA_CONFIG") or None).consumer_props
        return KafkaSource.connect(bootstrap, topic, group, dict(props) or None)
    raise ConfigError(f"--source: got {kind!r}, expected outbox or kafka")


def _run_until_stopped(run: Callable[[threading.Event], object], what: str) -> None:
    """Run `run(stop)` until SIGTERM or Ctrl-C (then once more with `stop` set: it drains and ends)."""
    with stop_event((signal.SIGTERM,)) as stop:
        err.print(f"sink: {what}; Ctrl-C stops")
        try:
            run(stop)
        except KeyboardInterrupt:
            stop.set()
            run(stop)


def _sink_outbox(analytics: AnalyticsStore, store_url: str | None, data_dir: Path | None, consumer: str,
                 config: SinkConfig, once: bool) -> SinkStats:
    from fleetforge.adapters.cli.wiring import store_for

    store = store_for(store_url, data_dir)
    try:
        sink = OutboxSink(store, EnvelopeWriter(analytics), config, consumer=consumer)
        if once:
            sink.drain()
        else:
            _run_until_stopped(sink.run, f"outbox:{consumer} -> ClickHouse ({analytics.backend}), lease "
                                    f"{sink.loop.lease.holder}")
        return sink.stats
    finally:
        store.close()


def _sink_kafka(analytics: AnalyticsStore, source: EventSource, config: SinkConfig, once: bool) -> SinkStats:
    try:
        sink = Sink(source, EnvelopeWriter(analytics), config)
        if once:
            sink.drain()
        else:
            _run_until_stopped(sink.run, f"{source.name} -> ClickHouse ({analytics.backend})")
        return sink.stats
    finally:
        source.close()


def register(app: typer.Typer) -> None:
    """Add `analytics`, `sql` and `sink` to the main app."""
    app.add_typer(analytics_app, name="analytics")

    @app.command("sql")
    def sql_cmd(
        ctx: typer.Context,
        query: Annotated[str, typer.Argument(help="One SQL statement, e.g. \"SELECT * FROM "
                                                  "telemetry.run_latency_metrics LIMIT 10\".")],
        data_dir: DataDirOpt = None,
        clickhouse_url: UrlOpt = None,
        fmt: Annotated[str, typer.Option("--format", envvar="FLEETFORGE_SQL_FORMAT",
                                         help="Output format, as clickhouse-client: PrettyCompact, CSV, "
                                              "JSONEachRow, TSV, Vertical, ...")] = "PrettyCompact",
    ) -> None:
        """Run a query on the analytics store and print the result like clickhouse-client."""
        _sql(ctx, query, data_dir, clickhouse_url, fmt)

    @app.command("sink")
    def sink_cmd(
        ctx: typer.Context,
        source: Annotated[str, typer.Option(envvar="FLEETFORGE_SINK_SOURCE",
                                            help="Where events come from: outbox (embedded) or kafka.")] = "outbox",
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        clickhouse_url: UrlOpt = None,
        consumer: Annotated[str, typer.Option(envvar="FLEETFORGE_SINK_CONSUMER",
                                              help="Outbox cursor and lease name of this sink: one process per name "
                                                   "writes, others stand by.")] = DEFAULT_CONSUMER,
        bootstrap_servers: Annotated[str | None, typer.Option(
            envvar="FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS", show_default=False,
            help="Kafka bootstrap servers (with --source kafka).")] = None,
        topic: Annotated[str, typer.Option(envvar="FLEETFORGE_KAFKA_TOPIC",
                                           help="Kafka topic of the events.")] = "fleetforge.events",
        group_id: Annotated[str, typer.Option(envvar="FLEETFORGE_SINK_GROUP_ID",
                                              help="Kafka consumer group of the sink.")] = "fleetforge-clickhouse-sink",
        batch_size: Annotated[int, typer.Option(envvar="FLEETFORGE_SINK_BATCH_SIZE", min=1, max=1_000_000,
                                                help="Events per insert at most.")] = 50_000,
        flush_interval: Annotated[float, typer.Option(envvar="FLEETFORGE_SINK_FLUSH_INTERVAL_S", min=0.0,
                                                      max=3600.0, help="Seconds between inserts at most.")] = 1.0,
        once: Annotated[bool, typer.Option("--once", envvar="FLEETFORGE_SINK_ONCE",
                                           help="Store what is there now, then exit.")] = False,
    ) -> None:
        """Stream events into the ClickHouse raw tables (and so the derived ones) until interrupted."""
        config = SinkConfig(batch_size=batch_size, flush_interval_s=flush_interval)
        with guard():
            src = None if source == "outbox" else _kafka_source(source, bootstrap_servers, topic, group_id)
            with _store(ctx, data_dir, clickhouse_url) as analytics:
                apply_schema(analytics)
                if src is None:
                    s = _sink_outbox(analytics, store, data_dir, consumer, config, once)
                else:
                    s = _sink_kafka(analytics, src, config, once)
        out.print(f"stored {s.inserted} events ({s.duplicates} duplicates skipped) in {s.flushes} inserts")
