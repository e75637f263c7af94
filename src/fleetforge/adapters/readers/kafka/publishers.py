"""The forwarder's two outbox readers: at-least-once and transactional publishing to Kafka.

Both run on `core.readers.ReaderLoop`, which owns the lease, the cursor, paging and the backoff:
`handle(batch)` returns only once the batch is acknowledged (at-least-once) or committed
(transactional), and raises otherwise, so the loop hands the same batch again. The transactional
reader also commits, inside each transaction, the batch's last outbox sequence as the offset of a
consumer group (`BusConfig.checkpoint_group_id`); the broker applies it only if the transaction
commits. `start` returns that checkpoint when it is ahead of the cursor, and after any uncertain
failure the next `handle` reads it again and skips what it covers, so a committed batch is never
published twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from fleetforge.adapters.readers.kafka.bus_config import BusConfig
from fleetforge.adapters.readers.kafka.bus_errors import DeliveryFailed
from fleetforge.adapters.readers.kafka.logs import QUIET, RDKAFKA_LOG
from fleetforge.core.backoff import Backoff
from fleetforge.core.forwarding import (
    ForwarderStore,
    TxnAction,
    classify_txn_error,
    format_position,
    parse_position,
    traceparent_of,
)
from fleetforge.domain.names import KafkaHeader
from fleetforge.ports.store import OutboxPosition, OutboxRecord

__all__ = ["AtLeastOnceReader", "KafkaReader", "TransactionalReader", "headers", "kafka_action"]

log = logging.getLogger("fleetforge.kafka.forwarder")

_EVENT_ID, _KIND, _TRACEPARENT, _POSITION = (str(h) for h in KafkaHeader)
_STOP_GRACE_S: Final = 5.0
_COMMIT_RETRIES: Final = 3
_TIMEOUTS: Final = frozenset({KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT_QUEUE})


def headers(r: OutboxRecord) -> list[tuple[str, str | bytes | None]]:
    """The Kafka headers of one outbox row."""
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


def _discard(producer: Producer) -> None:
    """Serve what callbacks are ready and let the producer go; a failed producer may raise here."""
    with contextlib.suppress(KafkaException):
        producer.flush(0)


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

    def owns(self, producer: Producer) -> bool:
        """Whether `producer` was abandoned to a stuck call (it must then never be flushed or closed)."""
        return any(p is producer for p in self.abandoned)


class KafkaReader:
    """What both readers share: settings, the run's stop event and lease check, and counters.

    `after_publish` is called with the last position of each acknowledged or committed batch,
    before the loop moves the cursor there. `stopping` and `holding` are wired by the forwarder.
    """

    def __init__(self, store: ForwarderStore, config: BusConfig, producer_conf: dict[str, str],
                 after_publish: Callable[[OutboxPosition], None] | None = None) -> None:
        self.name = config.outbox_consumer
        self.store = store
        self.config = config
        self.producer_conf = producer_conf
        self.after_publish = after_publish
        self.stopping = threading.Event()
        self.holding: Callable[[], bool] = lambda: True
        self.waiting: Callable[[], None] = lambda: None  # called while waiting on the broker
        self.producers = 0  # producers created (recreations after fatal errors included)
        self.recovered = 0  # times the transactional checkpoint was ahead of the cursor
        self.resent = 0  # events of failed batches, handed to the broker again

    def _refuse_if_stopping(self, records: Sequence[OutboxRecord]) -> None:
        if self.stopping.is_set():  # the loop's last try at a stop: no new delivery, the next holder sends it
            raise DeliveryFailed(f"stopping: {len(records)} events left for the next start", "stopping")

    def _send(self, producer: Producer, r: OutboxRecord) -> None:
        """Hand one outbox row to `producer`, serving delivery reports while its local queue is full."""
        while True:
            try:
                producer.produce(self.config.topic, r.envelope, r.run_id, headers=headers(r))
                return
            except BufferError:
                producer.poll(0.05)
                if self.stopping.is_set() or not self.holding():
                    raise

    def _published(self, records: Sequence[OutboxRecord]) -> None:
        if self.after_publish is not None:
            self.after_publish(records[-1].position)


# -- at-least-once --------------------------------------------------------------------------------


class AtLeastOnceReader(KafkaReader):
    """Sends a batch and waits for every acknowledgement; a failed delivery fails the whole batch.

    Only failures are reported back (`delivery.report.only.error`), which keeps the per-event cost
    low. A failed delivery (after librdkafka's own retries) fails `handle`, so the loop sends the
    whole batch again after a backoff: a row is never skipped, rows of that batch may be published twice.
    """

    def __init__(self, store: ForwarderStore, config: BusConfig, producer_conf: dict[str, str],
                 after_publish: Callable[[OutboxPosition], None] | None = None) -> None:
        super().__init__(store, config, producer_conf, after_publish)
        self.producer: Producer | None = None
        self._errors: list[str] = []

    def _failed(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err.name()))

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        if self.producer is None:
            conf: dict[str, Any] = {**self.producer_conf, "delivery.report.only.error": True,
                                    "on_delivery": self._failed, "logger": RDKAFKA_LOG}
            self.producer = Producer(conf)
            self.producers += 1
        return cursor

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        self._refuse_if_stopping(records)
        producer = self.producer
        assert producer is not None, "handle before start"
        self._errors = []
        try:
            for i, r in enumerate(records):
                self._send(producer, r)
                if i % 1000 == 999:
                    producer.poll(0)
        except BufferError:
            raise DeliveryFailed("stopped or lost the lease while the producer queue was full", "stopping") from None
        self._settle(producer, len(records))
        if self._errors:
            errors, self._errors = self._errors, []
            self.resent += len(records)
            log.warning("%d deliveries failed (%s); sending the %d events of the batch again",
                        len(errors), errors[0], len(records))
            raise DeliveryFailed(f"{len(errors)} of {len(records)} deliveries failed ({errors[0]})", errors[0])
        self._published(records)

    def _settle(self, producer: Producer, size: int) -> None:
        """Wait until every produced row is acknowledged or failed; raise if the lease is lost or stopped."""
        deadline: float | None = None
        while producer.flush(0.5) > 0:
            self.waiting()
            if not self.holding():
                raise DeliveryFailed(f"lease lost with {size} events unacknowledged", "lease_lost")
            if self.stopping.is_set():  # a clean stop still waits a little, to avoid sending the batch twice
                deadline = deadline or time.monotonic() + _STOP_GRACE_S
                if time.monotonic() > deadline:
                    raise DeliveryFailed(f"stopped with {size} events unacknowledged", "stopping")

    def stop(self) -> None:
        if self.producer is not None:
            _discard(self.producer)
        self.producer = None


# -- transactional --------------------------------------------------------------------------------


class TransactionalReader(KafkaReader):
    """One producer transaction per outbox batch, with the batch's checkpoint committed inside it."""

    def __init__(self, store: ForwarderStore, config: BusConfig, producer_conf: dict[str, str],
                 after_publish: Callable[[OutboxPosition], None] | None = None) -> None:
        super().__init__(store, config, producer_conf, after_publish)
        self.producer: Producer | None = None
        self._checkpoint: Consumer | None = None
        self._checkpoint_tp = TopicPartition(config.topic, 0)
        self._timeout_s = config.call_timeout_ms / 1000
        self._watchdog = _Watchdog(grace_s=5.0)
        self._uncertain = False  # a transaction failed: read the checkpoint before sending again
        self._pause = Backoff()

    # life cycle

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        """Fence older instances (init_transactions), then read from the later of the checkpoint and `cursor`."""
        self._ensure_producer()
        committed = self._committed(cursor)
        self._uncertain = False
        if committed is None:
            return cursor
        log.warning("outbox cursor %s is behind the last committed transaction (%s): moving it forward; "
                    "the events in between were already published", format_position(cursor),
                    format_position(committed))
        self.recovered += 1
        return committed

    def stop(self) -> None:
        if self.producer is not None and not self._watchdog.owns(self.producer):
            _discard(self.producer)
        self.producer = None
        if self._checkpoint is not None:
            self._checkpoint.close()
            self._checkpoint = None

    def _ensure_producer(self) -> Producer:
        """The producer, new with `init_transactions` done (fencing any older instance) when needed."""
        if self.producer is not None:
            return self.producer
        producer = Producer({**self.producer_conf, "logger": RDKAFKA_LOG})
        self.producers += 1
        try:
            self._watchdog.call("init_transactions", partial(producer.init_transactions, self._timeout_s),
                                self._timeout_s, producer)
        except KafkaException as exc:
            if not self._watchdog.owns(producer):
                _discard(producer)
            raise DeliveryFailed(f"init_transactions failed ({_describe(exc)})", _error_name(exc)) from exc
        self.producer = producer
        return producer

    def _drop_producer(self) -> None:
        if self.producer is not None and not self._watchdog.owns(self.producer):
            _discard(self.producer)
        self.producer = None

    # the checkpoint

    def _committed(self, cursor: OutboxPosition) -> OutboxPosition | None:
        """The position of the last committed checkpoint when it lies ahead of `cursor`, else None."""
        if self._checkpoint is None:
            self._checkpoint = Consumer({**self.config.connection_config(), **QUIET,
                                         "group.id": self.config.checkpoint_group_id, "enable.auto.commit": "false"})
        try:
            found = self._checkpoint.committed([self._checkpoint_tp], timeout=self._timeout_s)[0]
        except KafkaException as exc:
            raise DeliveryFailed(f"reading the transactional checkpoint failed ({_describe(exc)})",
                                 _error_name(exc)) from exc
        if found.offset < 0:
            return None
        target = self._locate(found.offset, found.metadata, cursor)
        return target if target is not None and target > cursor else None

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
        limit = max(10 * self.config.batch_size, 10_000)
        while scanned < limit:
            page = self.store.read_outbox(after, min(5_000, limit - scanned))
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

    def _not_yet_committed(self, records: Sequence[OutboxRecord]) -> Sequence[OutboxRecord]:
        """After an uncertain failure, the part of `records` the last committed transaction does not cover."""
        if not self._uncertain:
            return records
        committed = self._committed(self.store.get_cursor(self.name))
        self._uncertain = False
        if committed is None:
            return records
        done = next((i + 1 for i, r in enumerate(records) if r.position == committed),
                    len(records) if committed > records[-1].position else 0)
        if done:
            log.warning("the failed transaction had committed up to %s: %d events of the batch are not sent "
                        "again", format_position(committed), done)
            self.recovered += 1
        return records[done:]

    # one batch

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        self._refuse_if_stopping(records)
        producer = self._ensure_producer()
        todo = self._not_yet_committed(records)
        if todo:
            self._transaction(producer, todo)
        self._published(records)

    def _transaction(self, producer: Producer, records: Sequence[OutboxRecord]) -> None:
        """Send `records` in one transaction with their checkpoint; raise DeliveryFailed unless committed."""
        stage = "begin"
        try:
            producer.begin_transaction()
            # The checkpoint goes first: AddOffsetsToTxn then never waits behind in-flight batches.
            stage = "checkpoint"
            last = records[-1].position
            offsets = [TopicPartition(self.config.topic, 0, last[1], format_position(last))]
            assert self._checkpoint is not None
            metadata = self._checkpoint.consumer_group_metadata()
            self._watchdog.call(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(offsets, metadata, self._timeout_s),
                self._timeout_s, producer)
            stage = "produce"
            for r in records:
                self._send(producer, r)
            stage = "commit"
            self._commit(producer)
        except KafkaException as exc:
            self._fail(producer, records, stage, exc)
            raise DeliveryFailed(f"transaction failed at {stage} ({_describe(exc)})", _error_name(exc)) from exc
        except BufferError:  # stopped or lost the lease while the local queue was full
            self._uncertain = True
            if not self._abort(producer):
                self._drop_producer()
            raise DeliveryFailed("stopped or lost the lease while the producer queue was full", "stopping") from None

    def _commit(self, producer: Producer) -> None:
        attempts = 0
        self._pause.reset()
        while True:
            if not self.holding():
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
                self.stopping.wait(self._pause.next_delay())

    def _fail(self, producer: Producer, records: Sequence[OutboxRecord], stage: str, exc: KafkaException) -> None:
        """Abort, or drop the producer (the next batch makes a new one); the checkpoint is read again first."""
        action = kafka_action(exc)
        log.warning("transaction failed at %s (%s): %s; the batch of %d events will be sent again",
                    stage, _describe(exc), action.value, len(records))
        self.resent += len(records)
        self._uncertain = True  # the commit may have succeeded even though the call failed
        if action is TxnAction.RECREATE or not self._abort(producer):
            self._drop_producer()

    def _abort(self, producer: Producer) -> bool:
        try:
            self._watchdog.call("abort_transaction", lambda: producer.abort_transaction(self._timeout_s),
                                self._timeout_s, producer)
            return True
        except KafkaException as exc:
            log.warning("abort_transaction failed (%s); recreating the producer", _describe(exc))
            return False
