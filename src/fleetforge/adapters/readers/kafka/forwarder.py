"""The outbox forwarder: relays outbox rows to Kafka, at-least-once or transactionally.

It is an outbox reader run by the one reader loop (`core.readers.ReaderLoop`): one forwarder at a
time publishes for an outbox consumer (the lease is named after it); others wait as standby. The
forwarder only reads the outbox and writes its own cursor, so nothing it does (or a broker outage)
can block or slow the runtime: back-pressure stays in the outbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from opentelemetry.metrics import MeterProvider, NoOpMeter

from fleetforge import __version__
from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.logs import QUIET
from fleetforge.adapters.readers.kafka.publishers import AtLeastOnceReader, TransactionalReader
from fleetforge.adapters.readers.telemetry.delivery_metrics import DeliveryMetrics
from fleetforge.core.backoff import Backoff
from fleetforge.core.forwarding import DeliveryMode, ForwarderStore
from fleetforge.core.readers import ReaderLoop, ReaderOptions
from fleetforge.ports.store import OutboxPosition

__all__ = ["AT_LEAST_ONCE_WARNING", "METER_NAME", "Forwarder", "ForwarderStats", "ensure_topic"]

log = logging.getLogger("fleetforge.kafka.forwarder")

METER_NAME: Final = "fleetforge.forwarder"
AT_LEAST_ONCE_WARNING: Final = (
    "no transactional.id configured: the Kafka forwarder runs in AT-LEAST-ONCE mode. Events may be "
    "published more than once (after a crash or a broker error); consumers must treat events "
    "idempotently, de-duplicating on the event.id header. Set a transactional.id for "
    "effectively-exactly-once delivery (see docs/forwarder.md)."
)


def ensure_topic(config: BusConfig, stop: threading.Event, backoff: Backoff | None = None) -> bool:
    """Wait until the broker answers and the topic exists (created when `config.create_topic`).

    Returns False only when `stop` was set first.
    """
    backoff = backoff or Backoff()
    admin = AdminClient({**config.connection_config(), **QUIET})
    while not stop.is_set():
        try:
            topics = admin.list_topics(timeout=10).topics
            if config.topic in topics:
                return True
            if not config.create_topic:
                log.warning("topic %s does not exist and create_topic is false; waiting for it", config.topic)
            else:
                future = admin.create_topics(
                    [NewTopic(config.topic, num_partitions=config.topic_partitions, replication_factor=-1)]
                )[config.topic]
                try:
                    future.result(30)
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc).lower():
                        raise
                log.info("created topic %s with %d partitions", config.topic, config.topic_partitions)
                return True
        except KafkaException as exc:
            log.warning("broker at %s not usable yet (%s); retrying", config.bootstrap_servers, exc.args[0])
        stop.wait(backoff.next_delay())
    return False


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """What one forwarder did (events are outbox rows)."""

    sent: int = 0
    failed: int = 0  # events of batches that failed
    retried: int = 0  # events handed to the broker again after a failure
    batches: int = 0
    recovered: int = 0  # times the transactional checkpoint was ahead of the cursor
    producers: int = 0  # producers created (recreations after fatal errors included)


class Forwarder:
    """Relay `store`'s outbox to `config.topic` until stopped, on the one reader loop.

    The lease and the cursor are named `config.outbox_consumer`. At-least-once hands the reader
    batches of `max_in_flight` rows, transactional mode batches of `batch_size` rows (one
    transaction each). Metrics go through `meter_provider` (or an existing `delivery_metrics`);
    `after_publish` is called with the last position of each acknowledged (at-least-once) or
    committed (transactional) batch before the cursor moves there.
    """

    def __init__(
        self,
        store: ForwarderStore,
        config: BusConfig,
        *,
        meter_provider: MeterProvider | None = None,
        delivery_metrics: DeliveryMetrics | None = None,
        after_publish: Callable[[OutboxPosition], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        if delivery_metrics is None:
            meter = (meter_provider.get_meter(METER_NAME, __version__) if meter_provider is not None
                     else NoOpMeter(METER_NAME))
            delivery_metrics = DeliveryMetrics(meter)
        self.metrics = delivery_metrics
        self.producer_conf, self.overrides = config.producer_config()
        transactional = config.mode is DeliveryMode.TRANSACTIONAL
        reader_type = TransactionalReader if transactional else AtLeastOnceReader
        self.reader: AtLeastOnceReader | TransactionalReader = reader_type(store, config, self.producer_conf,
                                                                           after_publish)
        options = ReaderOptions(batch_size=config.batch_size if transactional else config.max_in_flight,
                                poll_s=config.poll_interval_ms / 1000, lease_ttl_ms=config.lease_ttl_ms,
                                backoff_initial_s=0.1, backoff_max_s=10.0)
        self.loop = ReaderLoop(store, self.reader, holder=config.holder, options=options, observer=self.metrics)
        self.reader.holding = self.loop.lease.valid
        self.reader.waiting = self.loop.report_backlog

    @property
    def mode(self) -> DeliveryMode:
        return self.config.mode

    @property
    def backoff(self) -> Backoff:
        """The loop's backoff (also used while waiting for the broker at start-up)."""
        return self.loop.backoff

    @property
    def stats(self) -> ForwarderStats:
        """A snapshot of what this forwarder did so far."""
        s, r = self.loop.stats, self.reader
        return ForwarderStats(sent=s.sent, failed=s.failed, retried=r.resent, batches=s.batches,
                              recovered=r.recovered, producers=r.producers)

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = False) -> ForwarderStats:
        """Forward until `stop` is set or, with `until_idle`, until the outbox is drained."""
        stop = stop or threading.Event()
        cfg = self.config
        for warning in self.overrides:
            log.warning("%s", warning)
        if self.mode is DeliveryMode.AT_LEAST_ONCE:
            log.warning("%s", AT_LEAST_ONCE_WARNING)
        else:
            log.info("transactional mode: transactional.id=%s, checkpoint group %s", cfg.transactional_id,
                     cfg.checkpoint_group_id)
        self.reader.stopping = stop
        if not ensure_topic(cfg, stop, self.backoff):
            return self.stats
        self.backoff.reset()
        try:
            self.loop.run(stop, until_idle=until_idle)
        finally:
            self.reader.stop()  # also after a start that failed half-way
        return self.stats
