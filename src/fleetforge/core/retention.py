"""Bounded storage: prune outbox rows every reader has passed, and finished runs past their age.

Rules (docs/retention.md):
- An outbox row is deleted once it is at or before the cursor of every registered reader (a row of
  `outbox_cursors`) and older than the outbox window. With no reader registered, the age alone
  decides. Rows are taken from the head of the outbox in delivery order, in small batches, and a
  pass stops at the first row still inside the window.
- A terminal run is deleted with its steps, step_deps, attempts, policy decisions and run budget once
  it finished longer ago than the run window, and not after the oldest event some reader has not
  read yet (its state stays while its events are still on their way). Checkpoints kept for its steps
  in other tables (`RunCheckpoints`: LangGraph's) are deleted just before it, in the same batch.
- A reader whose oldest unread event is older than the lag limit is reported (metric, doctor WARN);
  it still holds back pruning of what it has not read, so it never loses an event. An operator
  forgets a reader that will not come back (`fleetforge retention --forget-reader NAME`).
- One process at a time prunes: it holds the outbox lease named `retention`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from fleetforge.core.budgets import run_scope
from fleetforge.domain.envparse import format_duration
from fleetforge.domain.errors import ConfigError, StoreError
from fleetforge.ports.clock import Clock, SystemClock
from fleetforge.ports.retention import RetentionStore, RunCheckpoints
from fleetforge.ports.store import OutboxPosition

__all__ = [
    "COMPANION_SUFFIXES",
    "DEFAULT_SETTINGS",
    "LEASE_NAME",
    "ReaderStatus",
    "Retention",
    "RetentionReport",
    "RetentionService",
    "RetentionSettings",
]

log = logging.getLogger("fleetforge.retention")

LEASE_NAME: Final = "retention"
"""Name of the outbox lease (table outbox_leases) the pruning process holds."""
COMPANION_SUFFIXES: Final = (".open", ".delivered")
"""Trace exporters keep a second cursor `<name>.open` (the resume point of their oldest open run, at most
`<name>`; `<name>.delivered` before the reader loop): it bounds pruning like any cursor, is not reported on
its own and is forgotten with its reader."""
UNBOUNDED: Final[OutboxPosition] = (2**63 - 1, 2**63 - 1)

@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """What is kept how long, and how pruning paces itself."""

    outbox_window_s: float | None = 3600.0  # None: keep outbox rows forever
    run_window_s: float | None = 7 * 86400.0  # None: keep finished runs forever
    reader_lag_limit_s: float = 3600.0
    interval_s: float = 60.0
    batch: int = 1000
    max_pass_s: float = 5.0  # a pass stops after this long; the next one starts soon after
    duty: float = 0.5  # share of a pass spent deleting: after each batch it waits (1/duty - 1) x its time

    def __post_init__(self) -> None:
        if (self.batch < 1 or self.interval_s <= 0 or self.max_pass_s <= 0 or self.reader_lag_limit_s <= 0
                or not 0 < self.duty <= 1):
            raise ConfigError(f"retention settings: batch >= 1 and positive interval, pass time and lag limit "
                              f"expected, got {self}")

    @property
    def lease_ttl_ms(self) -> int:
        """Long enough to span a pass and the wait before the next one; renewed at every batch."""
        return int(max(30.0, 2 * self.interval_s + self.max_pass_s) * 1000)


DEFAULT_SETTINGS: Final = RetentionSettings()


@dataclass(frozen=True, slots=True)
class ReaderStatus:
    """A registered reader as retention sees it."""

    name: str
    position: OutboxPosition
    updated_us: int
    lag_s: float  # age of its oldest unread outbox row; 0 when it has read everything
    lagging: bool  # lag_s over the lag limit: it holds back pruning beyond the outbox window


@dataclass(slots=True)
class RetentionReport:
    """What one pass did (or, with dry_run, would do)."""

    dry_run: bool
    held_lease: bool
    readers: list[ReaderStatus] = field(default_factory=list)
    outbox_bound: OutboxPosition | None = None  # the slowest reader's cursor; None: no reader
    outbox_cutoff_us: int | None = None  # rows created before this may go; None: outbox kept forever
    run_cutoff_us: int | None = None  # runs finished before this may go; None: runs kept forever
    outbox_pruned: int = 0
    runs_pruned: int = 0
    checkpoint_threads_pruned: int = 0  # graph checkpoint threads deleted with the runs (never counted dry)
    complete: bool = True  # False when the pass stopped early (time budget, lease lost); more to do
    elapsed_s: float = 0.0

    @property
    def lagging(self) -> list[ReaderStatus]:
        return [r for r in self.readers if r.lagging]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["lagging"] = [r.name for r in self.lagging]
        return doc


class Retention:
    """Prunes one store. `run_once` is one pass; `RetentionService` repeats it on an interval.

    `checkpoints`: state kept for runs outside the store's tables, deleted with them (None: nothing)."""

    def __init__(self, store: RetentionStore, settings: RetentionSettings = DEFAULT_SETTINGS, *,
                 holder: str, clock: Clock | None = None, checkpoints: RunCheckpoints | None = None) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.settings = settings
        self.holder = holder
        self.clock = clock or SystemClock()
        self._after: OutboxPosition = (0, 0)  # everything at or before it is gone (while we hold the lease)
        self._renewed = 0.0  # time.monotonic() of the last lease renewal

    def readers(self, now_us: int | None = None) -> list[ReaderStatus]:
        """Every registered reader with its lag (companion cursors folded into their reader)."""
        now = self.clock.now_us() if now_us is None else now_us
        found = []
        for c in self.store.list_cursors():
            if c.name.endswith(COMPANION_SUFFIXES):
                continue
            first = self.store.first_unread(c.position)
            lag = 0.0 if first is None else max(0.0, (now - first) / 1e6)
            found.append(ReaderStatus(c.name, c.position, c.updated_us, lag, lag > self.settings.reader_lag_limit_s))
        return found

    def run_once(self, *, dry_run: bool = False) -> RetentionReport:
        """One pass: take the lease (unless dry_run), then prune the outbox and finished runs in batches."""
        started = time.monotonic()
        s = self.settings
        if not dry_run:
            if self.store.try_lease(LEASE_NAME, self.holder, s.lease_ttl_ms) is None:
                self._after = (0, 0)  # another process prunes meanwhile
                return RetentionReport(dry_run=False, held_lease=False)
            self._renewed = started
        now = self.clock.now_us()
        report = RetentionReport(dry_run=dry_run, held_lease=not dry_run)
        cursors = self.store.list_cursors()
        report.readers = self.readers(now)
        bound = min((c.position for c in cursors), default=None)
        report.outbox_bound = bound
        deadline = started + s.max_pass_s
        if s.outbox_window_s is not None:
            report.outbox_cutoff_us = now - int(s.outbox_window_s * 1e6)
            self._prune_outbox(report, bound or UNBOUNDED, report.outbox_cutoff_us, deadline, dry_run)
        if s.run_window_s is not None:
            cutoff = now - int(s.run_window_s * 1e6)
            oldest_unread = self.store.first_unread(bound) if bound is not None else None
            report.run_cutoff_us = cutoff if oldest_unread is None else min(cutoff, oldest_unread)
            self._prune_runs(report, report.run_cutoff_us, deadline, dry_run)
        report.elapsed_s = time.monotonic() - started
        return report

    def _keep_going(self, report: RetentionReport, deadline: float, dry_run: bool, batch_started: float) -> bool:
        """Whether another batch may run now: within the time budget and (pruning) still holding the lease.

        Pruning leaves the store to the scheduler between batches for (1/duty - 1) times as long as the batch took.
        The lease (a write) is renewed only once a quarter of its time has passed.
        """
        if not dry_run and self.settings.duty < 1:
            time.sleep(min(1.0, (time.monotonic() - batch_started) * (1 / self.settings.duty - 1)))
        if time.monotonic() > deadline:
            report.complete = False
            return False
        if dry_run or time.monotonic() - self._renewed < self.settings.lease_ttl_ms / 4000:
            return True
        self._renewed = time.monotonic()
        if self.store.try_lease(LEASE_NAME, self.holder, self.settings.lease_ttl_ms) is None:
            report.complete = False
            report.held_lease = False
            self._after = (0, 0)
            return False
        return True

    def _prune_outbox(self, report: RetentionReport, bound: OutboxPosition, cutoff_us: int, deadline: float,
                      dry_run: bool) -> None:
        after = (0, 0) if dry_run or self._after > bound else self._after
        batch = self.settings.batch
        while True:
            batch_started = time.monotonic()
            head = self.store.outbox_head(after, bound, batch)
            old = [p for p, _ in _prefix(head, cutoff_us)]
            if old:
                report.outbox_pruned += len(old) if dry_run else self.store.delete_outbox(old)
                after = old[-1]
                if not dry_run:
                    self._after = after
            if len(old) < batch or not self._keep_going(report, deadline, dry_run, batch_started):
                return

    def _prune_runs(self, report: RetentionReport, cutoff_us: int, deadline: float, dry_run: bool) -> None:
        after: tuple[int, str] = (0, "")
        batch = self.settings.batch
        prefix = run_scope("")
        while report.held_lease or dry_run:
            batch_started = time.monotonic()
            found = self.store.prunable_runs(cutoff_us, after, batch)
            if found:
                ids = [rid for _, rid in found]
                if dry_run:
                    report.runs_pruned += len(ids)
                else:  # checkpoints first: a pass that stops in between leaves the runs, found again next time
                    if self.checkpoints is not None:
                        report.checkpoint_threads_pruned += self.checkpoints.delete_for_runs(ids)
                    report.runs_pruned += self.store.delete_runs(ids, prefix)
                after = found[-1]
            if len(found) < batch or not self._keep_going(report, deadline, dry_run, batch_started):
                return

    def release(self) -> None:
        """Give the lease up (on shutdown), so another process takes over without waiting for it to expire."""
        self._after = (0, 0)
        self.store.release_lease(LEASE_NAME, self.holder)


def _prefix(head: list[tuple[OutboxPosition, int]], cutoff_us: int) -> list[tuple[OutboxPosition, int]]:
    """The leading rows created before `cutoff_us` (a pass stops at the first row inside the window)."""
    for i, (_, created) in enumerate(head):
        if created >= cutoff_us:
            return head[:i]
    return head


Observer = Callable[[RetentionReport], None]


class RetentionService:
    """Runs `Retention` passes on a background thread: every `interval_s`, sooner while a pass left work."""

    def __init__(self, retention: Retention, *, observer: Observer | None = None) -> None:
        self.retention = retention
        self.observer = observer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.last: RetentionReport | None = None

    def start(self) -> RetentionService:
        self._thread = threading.Thread(target=self._loop, name="fleetforge-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self.retention.release()
        except StoreError as exc:
            log.debug("releasing the retention lease failed: %s", exc)

    def __enter__(self) -> RetentionService:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _loop(self) -> None:
        interval = self.retention.settings.interval_s
        delay = 0.0
        while not self._stop.wait(delay):
            delay = interval
            try:
                report = self.retention.run_once()
            except StoreError as exc:
                log.warning("retention pass failed (%s); retrying in %gs", exc, interval)
                continue
            except Exception:  # retention must never take the worker down
                log.exception("retention pass failed")
                continue
            self.passes += 1
            self.last = report
            if report.held_lease and not report.complete:
                delay = min(interval, 1.0)
            for r in report.lagging:
                log.warning("outbox reader %r is %.0fs behind (lag limit %s): it holds back outbox pruning; "
                            "start it, or run `fleetforge retention --forget-reader %s` if it is gone for good",
                            r.name, r.lag_s, format_duration(self.retention.settings.reader_lag_limit_s), r.name)
            if self.observer is not None:
                try:
                    self.observer(report)
                except Exception:
                    log.exception("retention observer failed")
