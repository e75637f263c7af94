"""One exporter at work: a trace reader on the core reader loop, delivering each batch before it returns.

`TraceReader` is the exporter's `OutboxReader` (cursor and lease `exporter-<name>`): `handle` feeds the
batch to the `TraceAssembler` and delivers the spans it completes, synchronously, with the `Sender`'s
bounded retries (Retry-After, backoff); the loop moves the cursor only after `handle` returned, so the
cursor is "delivered up to here". One lease per exporter name: two processes never deliver one batch twice.

A run's spans need its earlier events (the run's start, an attempt's start), so a second cursor
`exporter-<name>.open` keeps the resume point of the oldest run still open (at most the first cursor).
On taking the lease the reader re-reads from there up to the first cursor to rebuild the open runs,
sending nothing of it. A permanent refusal (401/403) parks the exporter: nothing is committed, the lease
is given up, and the events stay in the outbox. See docs/exporters.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from opentelemetry.metrics import Meter

from fleetforge import __version__
from fleetforge.adapters.readers.traces.delivery import Outcome, Sender, Warnings
from fleetforge.adapters.readers.traces.discovery import ExporterConfig
from fleetforge.adapters.readers.traces.outbox import OutboxPages
from fleetforge.adapters.readers.traces.platforms import Platform
from fleetforge.core.exporting import TraceAssembler, TraceSpan
from fleetforge.core.readers import ReaderLoop, ReaderOptions, new_holder
from fleetforge.domain.errors import FleetForgeError, StoreError
from fleetforge.domain.names import Attr, Metric
from fleetforge.ports.store import OutboxPosition, OutboxRecord, Store

__all__ = ["OPEN_SUFFIX", "Exporter", "ExporterState", "TraceReader"]

log = logging.getLogger("fleetforge.exporters")
OPEN_SUFFIX: Final = ".open"
LEGACY_SUFFIX: Final = ".delivered"  # the delivered cursor of exporters before the reader loop
ZERO: Final[OutboxPosition] = (0, 0)
Group = list[TraceSpan]


@dataclass(slots=True)
class ExporterState:
    """What an exporter did so far (read by `status` and by tests)."""

    state: str = "starting"  # starting | running | standby | auth_failed | stopped
    events_read: int = 0
    spans_delivered: int = 0
    spans_rejected: int = 0
    spans_skipped: int = 0  # rebuilt from events delivered before, so not sent again
    requests: int = 0
    retries: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class DeliveryStopped(FleetForgeError):
    """The exporter stopped (or parked) before the batch was delivered; the cursor stays."""


class TraceReader:
    """Assembles and delivers one platform's spans, a batch of outbox records at a time."""

    def __init__(self, exporter: Exporter) -> None:
        self.x = exporter
        self.name = exporter.config.consumer
        self._asm: TraceAssembler | None = None
        self._sent_upto = ZERO  # spans ending at or before this were delivered by this process

    # -- OutboxReader --------------------------------------------------------------------------

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        """Rebuild the open runs from the `.open` cursor up to `cursor`; read on after `cursor`."""
        cursor = self._upgrade(cursor)
        self._rebuild(cursor)
        self.x.info.state = "running"
        return cursor

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        if self.x.parked:
            raise DeliveryStopped(f"trace exporter {self.x.name!r} is parked")
        if self._asm is None:  # a failed batch left the assembler ahead of the cursor: rebuild it
            self._rebuild(self.x.pages.get_cursor(self.name))
        assert self._asm is not None
        groups: list[Group] = []
        try:
            for rec in records:
                self.x.info.events_read += 1
                env = self.x.pages.envelope(rec)
                if env is not None:
                    spans = self._asm.feed(env, rec.position)
                    if spans:
                        groups.append(spans)
            self._deliver_all(groups)
        except BaseException:
            self._asm = None
            raise
        hold = self._asm.oldest_hold()
        last = records[-1].position
        self.x.pages.set_cursor(self.name + OPEN_SUFFIX, min(hold, last) if hold is not None else last)

    def stop(self) -> None:
        self._asm = None
        if not self.x.parked:
            self.x.info.state = "standby"

    # -- rebuilding ----------------------------------------------------------------------------

    def _upgrade(self, cursor: OutboxPosition) -> OutboxPosition:
        """Adopt the cursors of an exporter from before the reader loop (resume + `.delivered`), once."""
        legacy = self.x.store.get_cursor(self.name + LEGACY_SUFFIX)
        if legacy == ZERO:
            return cursor
        self.x.store.set_cursor(self.name + OPEN_SUFFIX, cursor)  # the old resume point
        delivered = max(cursor, legacy)
        self.x.store.set_cursor(self.name, delivered)
        forget = getattr(self.x.store, "forget_cursor", None)
        if forget is not None:
            forget(self.name + LEGACY_SUFFIX)
        return delivered

    def _rebuild(self, cursor: OutboxPosition) -> None:
        start = min(self.x.pages.get_cursor(self.name + OPEN_SUFFIX), cursor)  # absent: from the start
        asm = TraceAssembler(max_runs=self.x.delivery.max_open_runs, run_start=self.x.run_start, start=start)
        pos = start
        while pos < cursor:
            page = self.x.pages.read_outbox(pos, self.x.delivery.read_batch)
            for rec in page:
                if rec.position > cursor:
                    break
                env = self.x.pages.envelope(rec)
                if env is not None:
                    self.x.info.spans_skipped += len(asm.feed(env, rec.position))
            if len(page) < self.x.delivery.read_batch or page[-1].position >= cursor:
                break
            pos = page[-1].position
        self._asm = asm
        self._sent_upto = max(self._sent_upto, cursor)

    # -- delivery ------------------------------------------------------------------------------

    def _deliver_all(self, groups: list[Group]) -> None:
        """Deliver the groups in requests of at most `batch_size` spans; raise when stopped or parked."""
        chunk: list[Group] = []
        size = 0
        for g in groups:
            if g[-1].position <= self._sent_upto:  # delivered before a failure made this batch come again
                self.x.info.spans_skipped += len(g)
                continue
            if chunk and size + len(g) > self.x.delivery.batch_size:
                self._deliver(chunk)
                chunk, size = [], 0
            chunk.append(g)
            size += len(g)
        if chunk:
            self._deliver(chunk)

    def _deliver(self, batch: list[Group]) -> None:
        """Send a batch (splitting it on 413); raise DeliveryStopped when it was not settled."""
        x = self.x
        if not x.info.extra.get("prepared"):
            for req in x.platform.prepare():
                self._settled(x.sender.send(req))
            x.info.extra["prepared"] = True
        spans = [s for g in batch for s in g]
        x.info.requests += 1
        outcome = x.sender.send(x.platform.encode(spans))
        if outcome is Outcome.TOO_LARGE and len(batch) > 1:
            half = len(batch) // 2
            self._deliver(batch[:half])
            self._deliver(batch[half:])
            return
        self._settled(outcome)
        if outcome is Outcome.DELIVERED:
            x.info.spans_delivered += len(spans)
            x.count(x.sent_counter, len(spans))
            problem = x.platform.problem(x.sender.last_body)
            if problem:
                x.warnings.warn("partial", f"trace exporter {x.name!r}: {problem}")
        else:
            x.info.spans_rejected += len(spans)
            x.count(x.failed_counter, len(spans))
            if outcome is Outcome.TOO_LARGE:
                x.warnings.warn("413", f"trace exporter {x.name!r}: the platform refused {len(spans)} spans "
                                       "as too large (HTTP 413); they are dropped")
        self._sent_upto = max(self._sent_upto, batch[-1][-1].position)

    def _settled(self, outcome: Outcome) -> None:
        if outcome is Outcome.AUTH:
            self.x.park()
            raise DeliveryStopped(f"trace exporter {self.x.name!r}: credentials refused")
        if outcome is Outcome.STOPPED:
            raise DeliveryStopped(f"trace exporter {self.x.name!r}: stopped while retrying")


class Exporter:
    """Delivers one platform's spans from the outbox. `start()`, then `stop(timeout)` (drains)."""

    def __init__(self, config: ExporterConfig, platform: Platform, store: Store, *,
                 client: httpx.Client | None = None, meter: Meter | None = None,
                 pages: OutboxPages | None = None, logger: logging.Logger = log,
                 holder: str | None = None, lease_ttl_ms: int = 10_000) -> None:
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
        self._abort = threading.Event()  # stop retrying and reading now: the drain deadline passed
        self._drain = threading.Event()  # read to the end of the outbox, deliver, then end
        self.sender = Sender(config.name, self.client, config.headers, self.warnings,
                             max_backoff_s=d.max_backoff_s, abort=self._abort, on_retry=self._retried)
        self.info = ExporterState()
        self.reader = TraceReader(self)
        # the batch in flight is the bounded queue: a batch of n events completes at most n span groups
        options = ReaderOptions(batch_size=max(1, min(d.read_batch, d.queue_size)), poll_s=d.poll_interval_ms / 1000,
                                linger_s=d.flush_interval_ms / 1000, backoff_max_s=d.max_backoff_s,
                                lease_ttl_ms=lease_ttl_ms)
        self.loop = ReaderLoop(self.pages, self.reader, holder=holder or new_holder(), options=options)
        self._thread: threading.Thread | None = None
        self._metric_attrs = {str(Attr.CONSUMER): config.consumer}
        self.sent_counter = meter.create_counter(str(Metric.DELIVERY_SENT), unit="{span}") if meter else None
        self.failed_counter = meter.create_counter(str(Metric.DELIVERY_FAILED), unit="{span}") if meter else None
        self._retry_counter = meter.create_counter(str(Metric.DELIVERY_RETRIED), unit="{request}") if meter else None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def parked(self) -> bool:
        return self.info.state == "auth_failed"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Exporter:
        """Start the reader loop on a daemon thread (it never keeps the process alive)."""
        self.info.state = "standby"
        self._thread = threading.Thread(target=self._run, name=f"exporter-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.loop.run(self._abort, drain=self._drain)
        except Exception:  # a bug here must not take the host process down
            log.exception("trace exporter %r: reader failed", self.name)

    def wake(self) -> None:
        """Read the outbox now instead of at the next poll."""
        self.loop.wake.set()

    def request_stop(self) -> None:
        """Start draining: read to the end of the outbox, deliver, then end."""
        self._drain.set()
        self.loop.wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Read to the end of the outbox and deliver within `timeout` s, then stop; the cursor is committed.

        Returns True when everything read was delivered (or rejected) in time.
        """
        deadline = time.monotonic() + timeout
        self.request_stop()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        drained = thread is None or not thread.is_alive()
        self._abort.set()
        if thread is not None:
            thread.join(5.0)
        if self._own_client and (thread is None or not thread.is_alive()):
            self.client.close()
        if not self.parked:
            self.info.state = "stopped"
        return drained and not self.parked

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the outbox was read to its end and every span of finished work delivered."""
        deadline = time.monotonic() + timeout
        self.wake()
        while True:
            if self.parked:
                return False
            try:
                if self.store.outbox_backlog(self.config.consumer)[0] == 0:
                    return True
            except StoreError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def park(self) -> None:
        """Credentials refused: stop delivering (the events stay in the outbox) until restarted."""
        self.info.state = "auth_failed"
        self.info.last_error = self.sender.last_error
        self._abort.set()

    # -- counters ------------------------------------------------------------------------------

    def run_start(self, run_id: str) -> int | None:
        try:
            run = self.store.get_run(run_id)
        except StoreError:
            return None
        return run.created_us if run is not None else None

    def _retried(self) -> None:
        self.info.retries += 1
        self.info.last_error = self.sender.last_error
        self.count(self._retry_counter, 1)

    def count(self, counter: Any, n: int) -> None:
        if counter is not None:
            counter.add(n, self._metric_attrs)
