"""The ClickHouse sink over a consumer-group source (Kafka): polls, batches by size or time, writes, commits.

From the outbox the sink is an outbox reader on the core reader loop instead (`outbox_reader`); Kafka has
its own group protocol and offsets, so this loop stays for it, with the same stats and the one `Backoff`.
Batches follow ClickHouse's insert guidance: large (up to `batch_size` events, default 50,000) and
infrequent (at most one flush per `flush_interval_s`, default 1 s, unless a batch fills up). The
source's position is committed only after a successful insert; when the store is unavailable the
batch stays in memory and the write is retried with capped exponential backoff, while the source
(the outbox or Kafka) keeps the backlog. The runtime never waits for the sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter, WriteResult
from fleetforge.core.backoff import Backoff
from fleetforge.domain.errors import FleetForgeError
from fleetforge.ports.analytics import AnalyticsError, EventSource, SourceEvent

__all__ = ["Sink", "SinkConfig", "SinkStats", "record_flush"]

log = logging.getLogger("fleetforge.analytics.sink")


@dataclass(frozen=True, slots=True)
class SinkConfig:
    batch_size: int = 50_000
    flush_interval_s: float = 1.0
    poll_timeout_s: float = 0.1
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


@dataclass(slots=True)
class SinkStats:
    polled: int = 0
    inserted: int = 0
    duplicates: int = 0
    flushes: int = 0
    failures: int = 0
    last_error: str = ""
    last_flush_monotonic: float = 0.0
    flush_sizes: list[int] = field(default_factory=list)


def record_flush(stats: SinkStats, result: WriteResult, size: int, now: float) -> None:
    """Count one successful insert of `size` events in `stats`."""
    stats.inserted += result.inserted
    stats.duplicates += result.duplicates
    stats.flushes += 1
    stats.flush_sizes.append(size)
    del stats.flush_sizes[:-100]
    stats.last_flush_monotonic = now
    stats.last_error = ""


class Sink:
    """One sink loop over one source. Not thread-safe: run it on one thread."""

    def __init__(self, source: EventSource, writer: EnvelopeWriter, config: SinkConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_flush: Callable[[list[SourceEvent]], None] | None = None) -> None:
        self.source = source
        self.writer = writer
        self.config = config or SinkConfig()
        self.clock = clock
        self.on_flush = on_flush
        self.stats = SinkStats()
        self._buffer: list[SourceEvent] = []
        self._first_at = 0.0

    @property
    def pending(self) -> int:
        """Events polled but not yet stored and committed."""
        return len(self._buffer)

    def poll_once(self, timeout_s: float | None = None) -> int:
        """Poll up to the room left in the batch; returns how many events arrived."""
        room = self.config.batch_size - len(self._buffer)
        if room <= 0:
            return 0
        got = self.source.poll(room, self.config.poll_timeout_s if timeout_s is None else timeout_s)
        if got and not self._buffer:
            self._first_at = self.clock()
        self._buffer.extend(got)
        self.stats.polled += len(got)
        return len(got)

    def due(self) -> bool:
        return bool(self._buffer) and (len(self._buffer) >= self.config.batch_size
                                       or self.clock() - self._first_at >= self.config.flush_interval_s)

    def flush(self) -> int:
        """Write the batch and commit it; returns events inserted. Raises AnalyticsError, keeping the batch."""
        if not self._buffer:
            return 0
        batch = self._buffer
        try:
            result = self.writer.write(batch)
        except AnalyticsError as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            raise
        self.source.commit(batch)
        self._buffer = []
        record_flush(self.stats, result, len(batch), self.clock())
        if self.on_flush is not None:
            self.on_flush(batch)
        return result.inserted

    def drain(self) -> int:
        """Poll and flush until the source has nothing more; returns events inserted."""
        total = 0
        while True:
            got = self.poll_once(0.0)
            if self._buffer and (not got or len(self._buffer) >= self.config.batch_size):
                total += self.flush()
            elif not got:
                return total

    def run(self, stop: threading.Event, *, drain_timeout_s: float = 30.0) -> None:
        """Loop until `stop` is set, then drain what is left.

        While the store is down the batch is retried with backoff; once stopping, retries go on for
        at most `drain_timeout_s`, after which the uncommitted events stay in the source.
        """
        backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        deadline: float | None = None
        while True:
            try:
                if stop.is_set():
                    deadline = deadline if deadline is not None else self.clock() + drain_timeout_s
                    self.drain()
                    return
                if not self.due():
                    self.poll_once()
                if self.due():
                    self.flush()
                backoff.reset()
            except Exception as exc:  # the store or the source failed: back off and retry, never die
                delay = backoff.next_delay()
                if isinstance(exc, FleetForgeError):
                    log.warning("analytics sink: %s; %d events wait (retry in %.1fs)", exc, self.pending, delay)
                else:
                    log.exception("analytics sink failed unexpectedly; %d events wait (retry in %.1fs)",
                                  self.pending, delay)
                self.stats.last_error = str(exc)
                if deadline is not None:
                    left = deadline - self.clock()
                    if left <= 0:
                        log.warning("sink stopped with %d events not stored; the source keeps them", self.pending)
                        return
                    time.sleep(min(delay, left))
                else:
                    stop.wait(delay)
