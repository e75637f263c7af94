"""Pure logic of the outbox forwarder: delivery-mode detection and checks, backoff, error triage,
and outbox-position text.

Nothing here talks to a broker or a database; the Kafka adapter drives it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from fleetforge.core.backoff import Backoff
from fleetforge.ports.readers import ReaderStore
from fleetforge.ports.store import OutboxPosition

__all__ = [
    "BROKER_DEFAULT_MAX_TXN_TIMEOUT_MS",
    "REQUIRED_PRODUCER_PROPS",
    "Backoff",
    "DeliveryMode",
    "ForwarderStore",
    "TxnAction",
    "classify_txn_error",
    "config_problems",
    "delivery_mode",
    "format_position",
    "parse_position",
    "traceparent_of",
]

BROKER_DEFAULT_MAX_TXN_TIMEOUT_MS: Final = 900_000
"""Kafka's default `transaction.max.timeout.ms`, assumed when the broker's own value is not known."""

REQUIRED_PRODUCER_PROPS: Final[dict[str, str]] = {"enable.idempotence": "true", "acks": "all"}
"""What the forwarder always sets on its producer (idempotence and what it requires)."""

_FALSE: Final = frozenset({"false", "0", "no", "off"})
_ACKS_ALL: Final = frozenset({"all", "-1"})
_MAX_IN_FLIGHT_IDEMPOTENT: Final = 5


class DeliveryMode(StrEnum):
    """How the forwarder delivers: at-least-once (default) or inside producer transactions."""

    AT_LEAST_ONCE = "at-least-once"
    TRANSACTIONAL = "transactional"


ForwarderStore = ReaderStore
"""What the forwarder needs of a state store: the outbox, its cursors, and a named lease."""


def delivery_mode(transactional_id: str | None) -> DeliveryMode:
    """Transactional exactly when a non-empty `transactional.id` is configured."""
    return DeliveryMode.TRANSACTIONAL if transactional_id else DeliveryMode.AT_LEAST_ONCE


def config_problems(
    producer_props: Mapping[str, str],
    consumer_props: Mapping[str, str],
    *,
    broker_max_txn_timeout_ms: int = BROKER_DEFAULT_MAX_TXN_TIMEOUT_MS,
) -> list[str]:
    """Every reason the configuration is not effectively-exactly-once, each naming the fix.

    `producer_props` are the operator's producer settings as configured (before the forwarder
    forces its own), `transactional.id` included; `consumer_props` the consumers' settings.
    """
    problems: list[str] = []
    tid = producer_props.get("transactional.id", "").strip()
    if not tid:
        problems.append(
            "transactional.id is not set: the forwarder runs at-least-once. Set [bus] transactional_id, "
            "FLEETFORGE_KAFKA_TRANSACTIONAL_ID or [bus.client_props] \"transactional.id\" to a stable id "
            "unique to each forwarder instance")
    idem = producer_props.get("enable.idempotence")
    if idem is not None and idem.strip().lower() in _FALSE:
        problems.append(
            f"enable.idempotence is {idem!r}: transactions need the idempotent producer. Remove it or set "
            "it to true (the forwarder forces true and warns)")
    acks = producer_props.get("acks", producer_props.get("request.required.acks"))
    if acks is not None and acks.strip().lower() not in _ACKS_ALL:
        problems.append(
            f"acks is {acks!r}: idempotence and transactions need acks=all. Remove it or set it to all "
            "(the forwarder forces all and warns)")
    in_flight = producer_props.get("max.in.flight.requests.per.connection", producer_props.get("max.in.flight"))
    if in_flight is not None and _int(in_flight, 0) > _MAX_IN_FLIGHT_IDEMPOTENT:
        problems.append(
            f"max.in.flight.requests.per.connection is {in_flight!r}: the idempotent producer allows at "
            f"most {_MAX_IN_FLIGHT_IDEMPOTENT}. Remove it or lower it")
    retries = producer_props.get("retries", producer_props.get("message.send.max.retries"))
    if retries is not None and _int(retries, 1) == 0:
        problems.append("retries is 0: the idempotent producer needs retries. Remove it or set it above 0")
    timeout = producer_props.get("transaction.timeout.ms")
    if timeout is not None:
        value = _int(timeout, -1)
        if value <= 0:
            problems.append(f"transaction.timeout.ms is {timeout!r}: expected a whole number of milliseconds > 0")
        elif value > broker_max_txn_timeout_ms:
            problems.append(
                f"transaction.timeout.ms is {value}, above the broker's transaction.max.timeout.ms "
                f"({broker_max_txn_timeout_ms}): init_transactions would fail. Lower it to at most "
                f"{broker_max_txn_timeout_ms}")
    isolation = consumer_props.get("isolation.level", "read_committed")
    if isolation.strip() != "read_committed":
        problems.append(
            f"consumer isolation.level is {isolation!r}: consumers would see aborted transactions. Set "
            "[bus.consumer_props] \"isolation.level\" = \"read_committed\" (and keep de-duplicating on event.id)")
    auto_commit = consumer_props.get("enable.auto.commit")
    if auto_commit is not None and auto_commit.strip().lower() not in _FALSE:
        problems.append(
            f"consumer enable.auto.commit is {auto_commit!r}: offsets would be committed before events are "
            "processed. Remove it or set it to false")
    return problems


def _int(text: str, default: int) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return default


class TxnAction(StrEnum):
    """What to do after a transactional producer call failed."""

    RETRY = "retry"  # call the same operation again
    ABORT = "abort"  # abort the transaction, then send the batch again
    RECREATE = "recreate"  # throw the producer away, make a new one (init_transactions fences the old)


def classify_txn_error(*, retriable: bool, txn_requires_abort: bool, fatal: bool, timed_out: bool) -> TxnAction:
    """Triage a producer error: fatal or fenced -> RECREATE; abortable or timed out -> ABORT; retriable -> RETRY.

    Anything else (an error the client calls neither) recreates the producer, the safe default.
    """
    if fatal:
        return TxnAction.RECREATE
    if txn_requires_abort or timed_out:
        return TxnAction.ABORT
    if retriable:
        return TxnAction.RETRY
    return TxnAction.RECREATE


def format_position(position: OutboxPosition) -> str:
    """'xid:seq', the text of the outbox-position header."""
    return f"{position[0]}:{position[1]}"


def parse_position(text: str) -> OutboxPosition:
    """Inverse of `format_position`; raises ValueError on anything else."""
    xid, sep, seq = text.partition(":")
    if not sep:
        raise ValueError(f"outbox position: got {text!r}, expected 'xid:seq'")
    return int(xid), int(seq)


_TP_KEY: Final = '"traceparent":"'


def traceparent_of(envelope_json: str) -> str:
    """The envelope's trace.traceparent ('' when absent), without a full JSON parse when possible."""
    start = envelope_json.find(_TP_KEY)
    if start >= 0:
        start += len(_TP_KEY)
        end = envelope_json.find('"', start)
        if end > start:
            return envelope_json[start:end]
    try:
        trace = json.loads(envelope_json).get("trace") or {}
    except (ValueError, AttributeError):
        return ""
    value = trace.get("traceparent") if isinstance(trace, dict) else None
    return value if isinstance(value, str) else ""
