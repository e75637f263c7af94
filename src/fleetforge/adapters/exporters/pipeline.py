"""One exporter at work: an outbox reader thread and a batch sender thread around a bounded queue.

The reader reads the outbox through the exporter's own cursor, assembles spans and puts each
group (an attempt's spans, or a run's span) on a bounded queue; when the queue is full it waits,
so a slow or failing platform only makes this exporter lag behind in the outbox. The sender
flushes by size or time and retries as `delivery` says; while it retries, the reader reads no
further (the outbox, not memory, holds the backlog). Two cursors make restarts lose and repeat
nothing: `exporter-<name>` (where reading resumes: before the first event of the oldest run whose
spans are not all delivered) and `exporter-<name>.delivered` (the outbox position of the last
delivered span, so a replay skips what was already sent).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from opentelemetry.metrics import Meter

from fleetforge import __version__
from fleetforge.adapters.exporters.delivery import Outcome, Sender, Warnings
from fleetforge.adapters.exporters.outbox import OutboxPages, aligned_wait
from fleetforge.adapters.exporters.platforms import Platform
from fleetforge.adapters.exporters.settings import ExporterConfig
from fleetforge.core.exporting import TraceAssembler, TraceSpan
from fleetforge.domain.errors import StoreError
from fleetforge.domain.names import Attr, Metric
from fleetforge.ports.store import OutboxPosition, Store

__all__ = ["Exporter", "ExporterState"]

log = logging.getLogger("fleetforge.exporters")
COMMIT_EVERY_S: Final = 1.0
Group = list[TraceSpan]


@dataclass(slots=True)
class ExporterState:
    """What an exporter did so far (read by `status` and by tests)."""

    state: str = "starting"  # starting | running | caught_up | auth_failed | stopped
    events_read: int = 0
    spans_delivered: int = 0
    spans_rejected: int = 0
    spans_skipped: int = 0  # delivered before a restart, so not sent again
    requests: int = 0
    retries: int = 0
    last_error: str = ""
    position: OutboxPosition = (0, 0)
    delivered: OutboxPosition = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)


class Exporter:
    """Delivers one platform's spans from the outbox. `start()`, then `stop(timeout)` (drains)."""

    def __init__(self, config: ExporterConfig, platform: Platform, store: Store, *,
                 client: httpx.Client | None = None, meter: Meter | None = None,
                 pages: OutboxPages | None = None, logger: logging.Logger = log) -> None:
        self.config = config
        self.platform = platform
        self.store = store
        self.pages = pages or OutboxPages(store)
        d = config.delivery
        self.delivery = d
        self.warnings = Warnings(logger, secrets=config.secrets)
        self._own_client = client is None
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(d.timeout_s, connect=min(d.timeout_s, 5.0)),
            headers={"User-Agent": f"fleetforge/{__version__}"}, follow_redirects=False)
        self._abort = threading.Event()  # stop retrying: the drain deadline passed
        self._stop = threading.Event()  # stop reading new events (then drain)
        self._wake = threading.Event()
        self._queue: queue.Queue[Group] = queue.Queue(maxsize=d.queue_size)
        self._lock = threading.Lock()
        self._holds: Counter[OutboxPosition] = Counter()
        self._pending = 0  # groups queued or being sent, not yet settled
        self._ends = 0  # how many times the reader found the end of the outbox
        self._reader_done = threading.Event()
        self.sender = Sender(config.name, self.client, config.headers, self.warnings,
                             max_backoff_s=d.max_backoff_s, abort=self._abort, on_retry=self._retried)
        self.info = ExporterState()
        self._assembler: TraceAssembler | None = None
        self._threads: list[threading.Thread] = []
        attrs = {str(Attr.CONSUMER): config.consumer}
        self._metric_attrs = attrs
        self._sent_counter = meter.create_counter(str(Metric.DELIVERY_SENT), unit="{span}") if meter else None
        self._failed_counter = meter.create_counter(str(Metric.DELIVERY_FAILED), unit="{span}") if meter else None
        self._retry_counter = meter.create_counter(str(Metric.DELIVERY_RETRIED), unit="{request}") if meter else None

    @property
    def name(self) -> str:
        return self.config.name

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Exporter:
        """Start the reader and sender threads (daemons: they never keep the process alive)."""
        self.info.state = "running"
        for target, role in ((self._read_loop, "reader"), (self._send_loop, "sender")):
            t = threading.Thread(target=target, name=f"exporter-{self.name}-{role}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wake(self) -> None:
        """Read the outbox now instead of at the next poll."""
        self._wake.set()

    def request_stop(self) -> None:
        """Start draining: read to the end of the outbox, then deliver what is queued."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Read to the end of the outbox, deliver what is queued, commit the cursors; at most `timeout` s.

        Returns True when everything read was delivered (or rejected) in time.
        """
        deadline = time.monotonic() + timeout
        self.request_stop()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        drained = not any(t.is_alive() for t in self._threads)
        self._abort.set()
        for t in self._threads:
            t.join(0.5)
        self._commit(force=True)
        if self._own_client and not any(t.is_alive() for t in self._threads):
            self.client.close()
        if self.info.state != "auth_failed":
            self.info.state = "stopped"
        return drained and self.info.state != "auth_failed"

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the outbox was read to its end and every span of finished work delivered."""
        deadline = time.monotonic() + timeout
        ends = self._ends
        self._wake.set()
        while time.monotonic() < deadline:
            if self.info.state == "auth_failed":
                return False
            with self._lock:
                if self._reader_done.is_set():
                    return self._pending == 0
                if self._ends > ends and self._pending == 0:
                    return True
            time.sleep(0.02)
        return False

    # -- reader --------------------------------------------------------------------------------

    def _run_start(self, run_id: str) -> int | None:
        try:
            run = self.store.get_run(run_id)
        except StoreError:
            return None
        return run.created_us if run is not None else None

    def _load_cursors(self) -> bool:
        """Read both cursors (retrying while the store is unavailable); False when stopped first."""
        while True:
            try:
                position = self.store.get_cursor(self.config.consumer)
                delivered = self.store.get_cursor(self.config.consumer + ".delivered")
            except StoreError as exc:
                self.warnings.warn("store", f"trace exporter {self.name!r}: cannot read its cursor ({exc}); "
                                            "retrying")
                if self._stop.wait(2.0):
                    return False
                continue
            with self._lock:
                self.info.position, self.info.delivered = position, delivered
                self.info.extra["committed"] = position
            self._assembler = TraceAssembler(max_runs=self.delivery.max_open_runs, run_start=self._run_start,
                                             start=position)
            return True

    def _read_loop(self) -> None:
        if not self._load_cursors():
            self._reader_done.set()
            return
        assert self._assembler is not None
        asm = self._assembler
        pos = self.info.position
        last_commit = time.monotonic()
        poll_s = self.delivery.poll_interval_ms / 1000
        try:
            while self.info.state != "auth_failed":
                if self.sender.failing.is_set() and not self._abort.is_set():
                    # the platform is failing: the outbox keeps the events, so read no further for now
                    self._wake.wait(poll_s)
                    self._wake.clear()
                    continue
                try:
                    page = self.pages.read(pos, self.delivery.read_batch)
                except StoreError as exc:
                    self.warnings.warn("store", f"trace exporter {self.name!r}: cannot read the outbox ({exc}); "
                                                "retrying")
                    if self._stop.wait(2.0):
                        return
                    continue
                if page.bad:
                    self.warnings.warn("envelope", f"trace exporter {self.name!r}: skipped {page.bad} unreadable "
                                                   f"outbox rows after {pos}")
                for position, env in page.rows:
                    pos = position
                    self.info.events_read += 1
                    if env is None:
                        continue
                    spans = asm.feed(env, position)
                    if spans and not self._enqueue(spans):
                        return
                self.info.position = pos
                if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                    self._commit()
                    last_commit = time.monotonic()
                if not page.full:
                    with self._lock:
                        self._ends += 1
                    if self._stop.is_set():
                        return  # read to the end after stop(): the sender drains the rest
                    self._set_state("caught_up", only_from="running")
                    self._wake.wait(aligned_wait(poll_s))
                    self._wake.clear()
                else:
                    self._set_state("running", only_from="caught_up")
        except Exception:  # a bug here must not take the host process down
            log.exception("trace exporter %r: outbox reader failed", self.name)
        finally:
            self._reader_done.set()

    def _enqueue(self, spans: list[TraceSpan]) -> bool:
        """Queue a group of spans (waiting while the queue is full); False when the exporter must end."""
        if spans[-1].position <= self.info.delivered:
            self.info.spans_skipped += len(spans)
            return True
        with self._lock:
            self._holds[spans[-1].hold] += 1
            self._pending += 1
        while True:
            if self.info.state == "auth_failed" or self._abort.is_set():
                return False
            try:
                self._queue.put(spans, timeout=0.2)
                return True
            except queue.Full:
                self._set_state("running", only_from="caught_up")

    # -- sender --------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        batch: list[Group] = []
        first = 0.0
        flush_s = self.delivery.flush_interval_ms / 1000
        try:
            while True:
                wait = max(0.0, first + flush_s - time.monotonic()) if batch else 0.2
                try:
                    group = self._queue.get(timeout=wait)
                except queue.Empty:
                    pass
                else:
                    if not batch:
                        first = time.monotonic()
                    batch.append(group)
                size = sum(len(g) for g in batch)
                due = batch and (size >= self.delivery.batch_size or time.monotonic() - first >= flush_s
                                 or (self._reader_done.is_set() and self._queue.empty()))
                if due:
                    if not self._deliver(batch):
                        return
                    batch = []
                if self._abort.is_set() or (self._reader_done.is_set() and self._queue.empty() and not batch):
                    return
        except Exception:
            log.exception("trace exporter %r: sender failed", self.name)

    def _deliver(self, batch: list[Group]) -> bool:
        """Send a batch (splitting it on 413). False when the exporter must stop sending."""
        if not self.info.extra.get("prepared"):
            for req in self.platform.prepare():
                outcome = self.sender.send(req)
                if outcome is Outcome.AUTH:
                    return self._park()
                if outcome is Outcome.STOPPED:
                    return False
            self.info.extra["prepared"] = True
        spans = [s for g in batch for s in g]
        req = self.platform.encode(spans)
        self.info.requests += 1
        outcome = self.sender.send(req)
        if outcome is Outcome.TOO_LARGE and len(batch) > 1:
            half = len(batch) // 2
            return self._deliver(batch[:half]) and self._deliver(batch[half:])
        if outcome is Outcome.AUTH:
            return self._park()
        if outcome is Outcome.STOPPED:
            return False
        if outcome is Outcome.DELIVERED:
            self.info.spans_delivered += len(spans)
            self._count(self._sent_counter, len(spans))
            problem = self.platform.problem(self.sender.last_body)
            if problem:
                self.warnings.warn("partial", f"trace exporter {self.name!r}: {problem}")
        else:
            self.info.spans_rejected += len(spans)
            self._count(self._failed_counter, len(spans))
            if outcome is Outcome.TOO_LARGE:
                self.warnings.warn("413", f"trace exporter {self.name!r}: the platform refused {len(spans)} spans "
                                          "as too large (HTTP 413); they are dropped")
        self._settle(batch)
        return True

    def _settle(self, batch: list[Group]) -> None:
        with self._lock:
            for g in batch:
                hold = g[-1].hold
                self._holds[hold] -= 1
                if self._holds[hold] <= 0:
                    del self._holds[hold]
                self._pending -= 1
            self.info.delivered = max(self.info.delivered, batch[-1][-1].position)

    def _set_state(self, state: str, *, only_from: str) -> None:
        with self._lock:
            if self.info.state == only_from:
                self.info.state = state

    def _park(self) -> bool:
        with self._lock:
            self.info.state = "auth_failed"
        self.info.last_error = self.sender.last_error
        self._wake.set()
        return False

    def _retried(self) -> None:
        self.info.retries += 1
        self.info.last_error = self.sender.last_error
        self._count(self._retry_counter, 1)

    def _count(self, counter: Any, n: int) -> None:
        if counter is not None:
            counter.add(n, self._metric_attrs)

    # -- cursors -------------------------------------------------------------------------------

    def _commit(self, *, force: bool = False) -> None:
        """Store the resume and delivered cursors (both only move forward)."""
        asm = self._assembler
        if asm is None:
            return
        with self._lock:
            candidates = [self.info.position, *self._holds]
            delivered = self.info.delivered
        oldest = asm.oldest_hold()
        if oldest is not None:
            candidates.append(oldest)
        resume = min(candidates)
        try:
            if resume > self.info.extra.get("committed", (0, 0)) or force:
                self.store.set_cursor(self.config.consumer, resume)
                self.info.extra["committed"] = resume
            if delivered > self.info.extra.get("committed_delivered", (0, 0)):
                self.store.set_cursor(self.config.consumer + ".delivered", delivered)
                self.info.extra["committed_delivered"] = delivered
        except StoreError as exc:
            self.warnings.warn("commit", f"trace exporter {self.name!r}: cannot store its cursor ({exc}); "
                                         "will retry")

