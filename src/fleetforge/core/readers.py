"""The one loop every outbox reader runs on.

A reader (the Kafka forwarder, the ClickHouse sink, a trace exporter, telemetry, the observability stack's
follower) implements `OutboxReader`: "handle this batch". `ReaderLoop` gives each of them the same
machinery:

- a lease named after the reader: exactly one process per reader name consumes; others stand by and take
  over within the lease TTL when the holder dies;
- pages of the outbox in commit order after the reader's durable cursor;
- the cursor moves only after `handle` returned (commit after handle), and only while the lease is held;
- one jittered exponential backoff when handling or the store fails; the same batch is retried;
- delivery counters (`sent`, `failed`, `retried`, batch size and time) and backlog/lag gauges per reader.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fleetforge.core.backoff import Backoff
from fleetforge.core.lease import LeaseKeeper
from fleetforge.domain.errors import FleetForgeError
from fleetforge.ports.readers import DeliveryObserver, ReaderStateStore, ReaderStore
from fleetforge.ports.store import OutboxPosition, OutboxRecord

__all__ = [
    "CheckpointingReader",
    "OutboxReader",
    "ReaderLoop",
    "ReaderOptions",
    "ReaderStats",
    "host_pid",
    "new_holder",
]

log = logging.getLogger("fleetforge.readers")


def host_pid() -> str:
    """This process's name, `host-pid`: the default worker id and lease holder of the commands."""
    return f"{socket.gethostname()}-{os.getpid()}"


def new_holder() -> str:
    """A lease holder name unique to this loop: host, pid and a random suffix (two loops of one process differ)."""
    return f"{host_pid()}-{uuid.uuid4().hex[:8]}"


class OutboxReader(Protocol):
    """One consumer of the outbox. `name` is its cursor and lease name."""

    name: str

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        """Called each time the lease is taken, with the durable cursor; returns where to read after.

        A reader that keeps its own checkpoint elsewhere (a Kafka transaction) may return a later position;
        the loop then saves it as the cursor at once.
        """
        ...

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        """Deliver `records` (commit order). Raise to have the same batch retried after a backoff.

        An exception with a str attribute `error_kind` names the failure in the `failed` counter
        (otherwise its class name does).
        """
        ...

    def stop(self) -> None:
        """The lease was lost or the loop ends: drop whatever was not handled."""
        ...


@runtime_checkable
class CheckpointingReader(Protocol):
    """A reader that keeps state beside its cursor: after each handled batch the loop saves
    `checkpoint()` and the new cursor in one transaction (`ReaderStateStore.set_cursor_and_state`)."""

    def checkpoint(self) -> str:
        """The state after the last handled batch (opaque text)."""
        ...


@dataclass(frozen=True, slots=True)
class ReaderOptions:
    """How a reader pages and waits. `linger_s` > 0 lets a batch fill for up to that long."""

    batch_size: int = 1000
    poll_s: float = 0.05
    linger_s: float = 0.0
    lease_ttl_ms: int = 10_000
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 30.0
    backlog_every_s: float = 5.0


@dataclass(slots=True)
class ReaderStats:
    """What one loop did."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    batches: int = 0
    takeovers: int = 0
    last_error: str = ""


class ReaderLoop:
    """Runs one `OutboxReader` until stopped (`run`), or a page at a time (`step`, for tests and demos)."""

    def __init__(
        self,
        store: ReaderStore,
        reader: OutboxReader,
        *,
        holder: str,
        options: ReaderOptions | None = None,
        observer: DeliveryObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.reader = reader
        self.options = options or ReaderOptions()
        self.observer = observer
        self.clock = clock
        self.stats = ReaderStats()
        self.lease = LeaseKeeper(store, reader.name, holder, self.options.lease_ttl_ms, clock=clock)
        self.backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s)
        self._after: OutboxPosition | None = None  # None: not started under the current lease
        self._pending: list[OutboxRecord] = []
        self._first_at = 0.0
        self._backlog_at = -1e18
        self._draining = False
        self.wake = threading.Event()

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def holding(self) -> bool:
        """Whether this loop holds the reader's lease now."""
        return self._after is not None and self.lease.valid()

    # -- one step ---------------------------------------------------------------------------------

    def step(self) -> int:
        """Take the lease if needed, read one page and handle it when due; events handled (0: idle)."""
        if not self.holding:
            self._drop()
            if not self.lease.try_once():
                return 0
            cursor = self.store.get_cursor(self.name)
            after = self.reader.start(cursor)
            if after != cursor:  # the reader's own checkpoint is ahead: the cursor follows it
                self.store.set_cursor(self.name, after)
            self._after = after
            self.stats.takeovers += 1
            log.info("%s: reading after %s as %s", self.name, self._after, self.lease.holder)
        assert self._after is not None
        self._report_backlog()
        room = self.options.batch_size - len(self._pending)
        if room > 0:
            after = self._pending[-1].position if self._pending else self._after
            got = self.store.read_outbox(after, room)
            if got and not self._pending:
                self._first_at = self.clock()
            self._pending.extend(got)
        if not self._due():
            return 0
        return self._handle()

    def _due(self) -> bool:
        if not self._pending:
            return False
        full = len(self._pending) >= self.options.batch_size
        return full or self._draining or self.clock() - self._first_at >= self.options.linger_s

    def _handle(self) -> int:
        batch = self._pending
        started = self.clock()
        try:
            self.reader.handle(batch)
        except Exception as exc:
            self.stats.failed += len(batch)
            self.stats.last_error = str(exc)
            if self.observer is not None:
                kind = getattr(exc, "error_kind", None)
                self.observer.failed(self.name, len(batch), kind if isinstance(kind, str) else type(exc).__name__)
            raise
        if not self.lease.valid():  # a standby may have taken over meanwhile: do not move its cursor
            self._drop()
            raise LeaseLost(f"{self.name}: lease lost while handling a batch; it will be read again")
        position = batch[-1].position
        if isinstance(self.reader, CheckpointingReader):
            store: ReaderStateStore = self.store  # type: ignore[assignment]
            store.set_cursor_and_state(self.name, position, self.reader.checkpoint())
        else:
            self.store.set_cursor(self.name, position)
        self._after, self._pending = position, []
        self.stats.sent += len(batch)
        self.stats.batches += 1
        if self.observer is not None:
            self.observer.sent(self.name, len(batch))
            self.observer.batch(self.name, len(batch), self.clock() - started)
        return len(batch)

    def _drop(self) -> None:
        if self._after is not None:
            self.reader.stop()
        self._after, self._pending = None, []

    def report_backlog(self) -> None:
        """Report the backlog if due; for a reader that waits long inside `handle`. Never raises on store errors."""
        with _suppress_store_errors(self.name):
            self._report_backlog()

    def _report_backlog(self, force: bool = False) -> None:
        if self.observer is None:
            return
        now = self.clock()
        if force or now - self._backlog_at >= self.options.backlog_every_s:
            self._backlog_at = now
            rows, oldest = self.store.outbox_backlog(self.name)
            self.observer.backlog(self.name, rows, oldest)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until_idle: bool = False,
            drain: threading.Event | None = None) -> ReaderStats:
        """Loop until `stop` is set (or, with `until_idle`, until caught up); release the lease at the end.

        Once `drain` is set the loop reads to the end of the outbox without lingering and ends there; a
        standby (another process holds the lease) ends at once. A clean stop that leaves nothing behind.

        An exception that escapes (a BaseException out of `handle`, e.g. a crash) ends the loop without
        handing the pending batch again.
        """
        self.lease.start_renewing()
        clean = False
        try:
            while not stop.is_set():
                self._draining = drain is not None and drain.is_set()
                try:
                    handled = self.step()
                    self.backoff.reset()
                except Exception as exc:  # the store or the delivery failed: back off, retry the batch
                    self._retry(exc, stop)
                    continue
                if handled:
                    continue
                if until_idle and self.holding and not self._pending:
                    break
                if self._draining and not (self.holding and self._pending):
                    break
                wait = self.options.poll_s if self.holding else self.lease.ttl_s / 3
                if self._pending:
                    wait = min(wait, max(0.0, self._first_at + self.options.linger_s - self.clock()))
                if self.wake.wait(wait):
                    self.wake.clear()
            clean = True
        finally:
            if clean:
                self._drain_on_stop()
            self._drop()
            self.lease.release()
        return self.stats

    def _retry(self, exc: Exception, stop: threading.Event) -> None:
        delay = self.backoff.next_delay()
        self.stats.retried += 1
        self.stats.last_error = str(exc)
        if self.observer is not None:
            self.observer.retried(self.name)
        if isinstance(exc, FleetForgeError | LeaseLost):
            log.warning("%s: %s; retrying in %.1f s", self.name, exc, delay)
        else:
            log.exception("%s failed unexpectedly; retrying in %.1f s", self.name, delay)
        stop.wait(delay)

    def _drain_on_stop(self) -> None:
        """Hand what is pending to the reader once more, so a clean stop leaves nothing behind."""
        if self._pending and self.holding:
            try:
                self._handle()
            except Exception as exc:
                log.warning("%s: stopped with %d events not handled (%s); they are read again next time",
                            self.name, len(self._pending), exc)
        with _suppress_store_errors(self.name):
            self._report_backlog(force=True)


class LeaseLost(Exception):
    """The reader's lease expired while it handled a batch; the batch stays unacknowledged."""


class _suppress_store_errors:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, FleetForgeError):
            log.debug("%s: %s", self.name, exc)
            return True
        return False
