"""The two ways the forwarder publishes outbox rows: at-least-once (pipelined) and transactional.

Both read the outbox after the consumer's cursor and move the cursor only after the broker
acknowledged (at-least-once) or the transaction committed (transactional). The transactional
publisher also commits, inside each transaction, the last row's outbox sequence as the offset of
a consumer group (`BusConfig.checkpoint_group_id`); the broker applies that offset only if the
transaction commits, so at start-up and after any uncertain failure the publisher moves the
cursor forward to it and never re-publishes a committed batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from fleetforge.adapters.kafka.config import BusConfig
from fleetforge.adapters.kafka.logs import QUIET, RDKAFKA_LOG
from fleetforge.adapters.otel.delivery import DeliveryMetrics
from fleetforge.core.forwarding import (
    Backoff,
    ForwarderStore,
    TxnAction,
    classify_txn_error,
    format_position,
    parse_position,
    traceparent_of,
)
from fleetforge.core.lease import LeaseKeeper
from fleetforge.domain.errors import StoreError
from fleetforge.domain.names import KafkaHeader
from fleetforge.ports.store import OutboxPosition, OutboxRecord

__all__ = ["AtLeastOncePublisher", "Context", "ForwarderStats", "TransactionalPublisher", "kafka_action"]

log = logging.getLogger("fleetforge.kafka.forwarder")

_EVENT_ID, _KIND, _TRACEPARENT, _POSITION = (str(h) for h in KafkaHeader)
_BACKLOG_INTERVAL_S: Final = 5.0
_STOP_GRACE_S: Final = 5.0
_COMMIT_RETRIES: Final = 3
_TIMEOUTS: Final = frozenset({KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT_QUEUE})


@dataclass(slots=True)
class ForwarderStats:
    """What one forwarder did (events are outbox rows)."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    batches: int = 0
    recovered: int = 0  # times the cursor moved forward to the transactional checkpoint
    producers: int = 0  # producers created (recreations after fatal errors included)


@dataclass(slots=True)
class Context:
    """Everything a publisher shares with the forwarder."""

    store: ForwarderStore
    config: BusConfig
    producer_conf: dict[str, str]
    metrics: DeliveryMetrics
    lease: LeaseKeeper
    stop: threading.Event
    after_publish: Callable[[OutboxPosition], None] | None = None
    stats: ForwarderStats = field(default_factory=ForwarderStats)
    backoff: Backoff = field(default_factory=Backoff)
    until_idle: bool = False
    _backlog_at: float = 0.0

    @property
    def consumer(self) -> str:
        return self.config.outbox_consumer

    def running(self) -> bool:
        return not self.stop.is_set() and self.lease.valid()

    def pause(self) -> None:
        """Wait the next backoff delay (returns early on stop)."""
        self.stop.wait(self.backoff.next_delay())

    def read(self, after: OutboxPosition, limit: int) -> list[OutboxRecord] | None:
        """Rows after `after`, or None when the store failed (logged; the caller backs off)."""
        try:
            return self.store.read_outbox(after, limit)
        except StoreError as exc:
            log.warning("reading the outbox failed (%s); retrying", exc)
            return None

    def save_cursor(self, position: OutboxPosition) -> bool:
        """Move the cursor; retries while the store fails and the forwarder runs. True once saved."""
        while True:
            try:
                self.store.set_cursor(self.consumer, position)
                return True
            except StoreError as exc:
                log.warning("saving the outbox cursor failed (%s); retrying", exc)
                if self.stop.is_set():
                    return False
                self.pause()

    def report_backlog(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_at < _BACKLOG_INTERVAL_S:
            return
        self._backlog_at = now
        try:
            rows, oldest = self.store.outbox_backlog(self.consumer)
        except StoreError as exc:
            log.debug("backlog query failed: %s", exc)
            return
        self.metrics.backlog(self.consumer, rows, oldest)

    def message(self, r: OutboxRecord) -> dict[str, Any]:
        """produce() keyword arguments for one outbox row."""
        return {"topic": self.config.topic, "value": r.envelope, "key": r.run_id, "headers": _headers(r)}

    def send(self, producer: Producer, r: OutboxRecord) -> None:
        """Hand one outbox row to `producer`, serving delivery reports while its local queue is full."""
        while True:
            try:
                producer.produce(self.config.topic, r.envelope, r.run_id, headers=_headers(r))
                return
            except BufferError:
                producer.poll(0.05)
                if self.stop.is_set():
                    raise


def _headers(r: OutboxRecord) -> list[tuple[str, str | bytes | None]]:
    return [(_EVENT_ID, r.event_id), (_KIND, r.kind), (_TRACEPARENT, traceparent_of(r.envelope)),
            (_POSITION, f"{r.position[0]}:{r.position[1]}")]


def kafka_action(exc: KafkaException) -> TxnAction:
    """Triage a confluent-kafka exception (see core.forwarding.classify_txn_error)."""
    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError):
        return TxnAction.RECREATE
    return classify_txn_error(retriable=error.retriable(), txn_requires_abort=error.txn_requires_abort(),
                              fatal=error.fatal(), timed_out=error.code() in _TIMEOUTS)


def _describe(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def _error_name(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return str(error.name()) if isinstance(error, KafkaError) else "unknown"


class _Watchdog:
    """Runs blocking transactional calls on a daemon thread and gives up on one that overruns.

    librdkafka can leave a call such as send_offsets_to_transaction waiting past its own timeout
    when connections to the coordinator flap; an overrun raises a fatal error instead, so the
    producer is replaced (init_transactions of the new one fences the stuck one, which is kept
    referenced so it is never destroyed while in use). Daemon threads never hold up an exit.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.abandoned: list[Any] = []

    def call(self, name: str, fn: Callable[[], Any], timeout_s: float, owner: Any) -> Any:
        done = threading.Event()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed back to the caller's thread
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=run, name=f"kafka-{name}", daemon=True).start()
        if not done.wait(timeout_s + self.grace_s):
            log.warning("%s did not return within %.0f s; replacing the producer", name, timeout_s + self.grace_s)
            self.abandoned.append(owner)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{name} overran its timeout", fatal=True))
        ok, value = outcome[0]
        if not ok:
            raise value
        return value


def _discard(producer: Producer) -> None:
    """Serve what callbacks are ready and let the producer go; a failed producer may raise here."""
    with contextlib.suppress(KafkaException):
        producer.flush(0)


# -- at-least-once --------------------------------------------------------------------------------


class AtLeastOncePublisher:
    """Chunked publishing: up to `max_in_flight` rows go to the producer, then the forwarder waits
    for the broker's acknowledgements and moves the cursor past the chunk.

    Only failures are reported back (`delivery.report.only.error`), which keeps the per-event cost
    low. A failed delivery (after librdkafka's own retries) sends the whole chunk again after a
    backoff, so a row is never skipped; rows of that chunk may be published twice.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._errors: list[str] = []
        conf: dict[str, Any] = {**ctx.producer_conf, "delivery.report.only.error": True,
                                "on_delivery": self._failed, "logger": RDKAFKA_LOG}
        self.producer = Producer(conf)
        ctx.stats.producers += 1

    def _failed(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err.name()))

    def run(self) -> bool:
        """Publish until stopped, the lease is lost, or (with until_idle) the outbox is drained (True)."""
        ctx, cfg = self.ctx, self.ctx.config
        cursor = ctx.store.get_cursor(ctx.consumer)
        while ctx.running():
            started = time.monotonic()
            produced, end, store_failed = 0, cursor, False
            while produced < cfg.max_in_flight:
                records = ctx.read(end, min(cfg.batch_size, cfg.max_in_flight - produced))
                if not records:
                    store_failed = records is None
                    break
                for r in records:
                    ctx.send(self.producer, r)
                produced += len(records)
                end = records[-1].position
                self.producer.poll(0)
            ctx.report_backlog()
            if produced == 0:
                if store_failed:
                    ctx.pause()
                elif ctx.until_idle:
                    return True
                else:
                    ctx.stop.wait(cfg.poll_interval_ms / 1000)
                continue
            if not self._settle():
                break
            if self._errors:
                self._resend(produced)
                continue
            ctx.stats.sent += produced
            ctx.stats.batches += 1
            ctx.metrics.sent(ctx.consumer, produced)
            ctx.metrics.batch(ctx.consumer, produced, time.monotonic() - started)
            if ctx.after_publish is not None:
                ctx.after_publish(end)
            if ctx.save_cursor(end):
                cursor = end
                ctx.backoff.reset()
        return False

    def _settle(self) -> bool:
        """Wait until every produced row is acknowledged or failed; False if the lease is lost or stopped."""
        ctx = self.ctx
        deadline: float | None = None
        while self.producer.flush(0.5) > 0:
            ctx.report_backlog()
            if not ctx.lease.valid():
                return False
            if ctx.stop.is_set():  # a clean stop still waits a little, to avoid sending the chunk twice
                deadline = deadline or time.monotonic() + _STOP_GRACE_S
                if time.monotonic() > deadline:
                    return False
        return True

    def _resend(self, produced: int) -> None:
        ctx = self.ctx
        errors, self._errors = self._errors, []
        kind = errors[0]
        ctx.metrics.failed(ctx.consumer, len(errors), kind)
        ctx.metrics.retried(ctx.consumer, produced)
        ctx.stats.failed += len(errors)
        ctx.stats.retried += produced
        log.warning("%d deliveries failed (%s); sending the %d events of the chunk again",
                    len(errors), kind, produced)
        ctx.pause()

    def close(self) -> None:
        _discard(self.producer)


# -- transactional --------------------------------------------------------------------------------


class TransactionalPublisher:
    """One producer transaction per outbox batch, with the batch's checkpoint committed inside it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.producer: Producer | None = None
        self._checkpoint = Consumer({**ctx.config.connection_config(), **QUIET,
                                     "group.id": ctx.config.checkpoint_group_id, "enable.auto.commit": "false"})
        self._checkpoint_tp = TopicPartition(ctx.config.topic, 0)
        self._timeout_s = ctx.config.call_timeout_ms / 1000
        self._watchdog = _Watchdog(grace_s=5.0)

    # producer life cycle

    def _open(self) -> bool:
        """A new producer with `init_transactions` done (fencing any older instance); False if stopped."""
        ctx = self.ctx
        while not ctx.stop.is_set():
            producer = Producer({**ctx.producer_conf, "logger": RDKAFKA_LOG})
            ctx.stats.producers += 1
            try:
                self._watchdog.call("init_transactions", partial(producer.init_transactions, self._timeout_s),
                                    self._timeout_s, producer)
            except KafkaException as exc:
                log.warning("init_transactions failed (%s); retrying", _describe(exc))
                _discard(producer)
                ctx.pause()
                continue
            self.producer = producer
            return True
        return False

    def _recreate(self) -> bool:
        if self.producer is not None and not any(p is self.producer for p in self._watchdog.abandoned):
            _discard(self.producer)
            self.producer = None
        return self._open()

    def recover(self) -> bool:
        """Move the cursor forward to the last committed checkpoint; False when the broker did not answer."""
        ctx = self.ctx
        try:
            found = self._checkpoint.committed([self._checkpoint_tp], timeout=self._timeout_s)[0]
        except KafkaException as exc:
            log.warning("reading the transactional checkpoint failed (%s); retrying", _describe(exc))
            return False
        if found.offset < 0:
            return True
        cursor = ctx.store.get_cursor(ctx.consumer)
        target = self._locate(found.offset, found.metadata, cursor)
        if target is not None and target > cursor:
            log.warning("outbox cursor %s is behind the last committed transaction (%s): moving it forward; "
                        "the events in between were already published", format_position(cursor),
                        format_position(target))
            if not ctx.save_cursor(target):
                return False
            ctx.stats.recovered += 1
        return True

    def _locate(self, seq: int, metadata: str | None, cursor: OutboxPosition) -> OutboxPosition | None:
        """The outbox position of checkpoint `seq` if it lies ahead of `cursor`, else None."""
        if metadata:
            try:
                position = parse_position(metadata)
            except ValueError:
                position = None
            if position is not None and position[1] == seq:
                return position
        if cursor[1] == seq:
            return None
        after, scanned = cursor, 0
        limit = max(10 * self.ctx.config.batch_size, 10_000)
        while scanned < limit:
            page = self.ctx.store.read_outbox(after, min(5_000, limit - scanned))
            for r in page:
                if r.position[1] == seq:
                    return r.position
            if not page:
                break
            scanned += len(page)
            after = page[-1].position
        log.info("checkpoint seq %d is not ahead of the outbox cursor %s; keeping the cursor",
                 seq, format_position(cursor))
        return None

    # the loop

    def run(self) -> bool:
        """Publish until stopped, the lease is lost, or (with until_idle) the outbox is drained (True)."""
        ctx, cfg = self.ctx, self.ctx.config
        if self.producer is None and not self._open():
            return False
        while not self.recover():
            if ctx.stop.is_set():
                return False
            ctx.pause()
        while ctx.running():
            cursor = ctx.store.get_cursor(ctx.consumer)
            records = ctx.read(cursor, cfg.batch_size)
            if records is None:
                ctx.pause()
                continue
            ctx.report_backlog()
            if not records:
                if ctx.until_idle:
                    return True
                ctx.stop.wait(cfg.poll_interval_ms / 1000)
                continue
            if self._publish(records):
                last = records[-1].position
                if ctx.after_publish is not None:
                    ctx.after_publish(last)
                ctx.save_cursor(last)
                ctx.backoff.reset()
        return False

    def _publish(self, records: list[OutboxRecord]) -> bool:
        """Send `records` in one transaction; True once committed. On failure, recover and return False."""
        ctx = self.ctx
        producer = self.producer
        assert producer is not None
        started = time.monotonic()
        stage = "begin"
        try:
            producer.begin_transaction()
            # The checkpoint goes first: AddOffsetsToTxn then never waits behind in-flight batches.
            stage = "checkpoint"
            last = records[-1].position
            offsets = [TopicPartition(ctx.config.topic, 0, last[1], format_position(last))]
            metadata = self._checkpoint.consumer_group_metadata()
            self._watchdog.call(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(offsets, metadata, self._timeout_s),
                self._timeout_s, producer)
            stage = "produce"
            for r in records:
                ctx.send(producer, r)
            stage = "commit"
            self._commit(producer)
        except KafkaException as exc:
            self._failed(records, stage, exc)
            return False
        except BufferError:  # stopped while the local queue was full
            self._abort(producer)
            return False
        ctx.stats.sent += len(records)
        ctx.stats.batches += 1
        ctx.metrics.sent(ctx.consumer, len(records))
        ctx.metrics.batch(ctx.consumer, len(records), time.monotonic() - started)
        return True

    def _commit(self, producer: Producer) -> None:
        attempts = 0
        while True:
            if not self.ctx.lease.valid():
                raise KafkaException(KafkaError(KafkaError._STATE, "outbox lease lost before commit",
                                                txn_requires_abort=True))
            try:
                self._watchdog.call("commit_transaction", lambda: producer.commit_transaction(self._timeout_s),
                                    self._timeout_s, producer)
                return
            except KafkaException as exc:
                attempts += 1
                if kafka_action(exc) is not TxnAction.RETRY or attempts > _COMMIT_RETRIES:
                    raise
                log.warning("commit_transaction: %s; retrying", _describe(exc))
                self.ctx.pause()

    def _failed(self, records: list[OutboxRecord], stage: str, exc: KafkaException) -> None:
        ctx = self.ctx
        action = kafka_action(exc)
        log.warning("transaction failed at %s (%s): %s; the batch of %d events will be sent again",
                    stage, _describe(exc), action.value, len(records))
        ctx.metrics.failed(ctx.consumer, len(records), _error_name(exc))
        ctx.metrics.retried(ctx.consumer, len(records))
        ctx.stats.failed += len(records)
        ctx.stats.retried += len(records)
        producer = self.producer
        aborted = action is not TxnAction.RECREATE and producer is not None and self._abort(producer)
        if not aborted and not self._recreate():
            return
        ctx.pause()
        # The commit may have succeeded even though the call failed: trust the checkpoint.
        while not self.recover() and not ctx.stop.is_set():
            ctx.pause()

    def _abort(self, producer: Producer) -> bool:
        try:
            self._watchdog.call("abort_transaction", lambda: producer.abort_transaction(self._timeout_s),
                                self._timeout_s, producer)
            return True
        except KafkaException as exc:
            log.warning("abort_transaction failed (%s); recreating the producer", _describe(exc))
            return False

    def close(self) -> None:
        if self.producer is not None and not any(p is self.producer for p in self._watchdog.abandoned):
            _discard(self.producer)
        self.producer = None
        self._checkpoint.close()
