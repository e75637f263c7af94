"""An asyncio worker: claims ready steps in batches, runs them concurrently, completes them in batches.

Database work runs on one dedicated thread per worker, so the event loop never blocks on it; the
lease of every running attempt is extended while it runs, and expired leases of dead workers are
reaped so their attempts are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fleetforge.core.agent import holds_worker
from fleetforge.core.held_units import HeldUnits
from fleetforge.core.scheduler import Claim, Outcome, Scheduler
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import StoreError
from fleetforge.domain.jsontext import fits
from fleetforge.domain.models import ErrorKind, StepType
from fleetforge.domain.names import EventKind as K
from fleetforge.ports.clock import Clock, SystemClock
from fleetforge.ports.executor import ExecutionContext, Executor, StepFailure
from fleetforge.ports.store import Store

__all__ = ["Observer", "Worker"]

log = logging.getLogger("fleetforge.worker")
T = TypeVar("T")
Observer = Callable[[list[Envelope]], None]
"""Called with the events of every committed transaction, in commit order (metrics, spans)."""


class Worker:
    """Claims and executes steps until stopped (or, with `until_idle`, until no run is open)."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        executors: dict[str, Executor],
        *,
        worker_id: str,
        concurrency: int = 16,
        poll_interval_s: float = 0.05,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.executors = executors
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.clock = clock or SystemClock()
        self.observer = observer
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{worker_id}")
        self._inflight: dict[tuple[str, str], tuple[Claim, asyncio.Task[None]]] = {}
        self._done: list[Outcome] = []
        self._units: dict[tuple[str, str], Claim] = {}  # held units of graph steps, running now
        self._wake = asyncio.Event()
        self._look = True  # steps may be ready that this worker has not tried to claim yet
        self._signals = 0  # wake-ups received (`_ready`), to tell one that came during a claim
        self._claimed_at = 0.0  # loop time of the last claim
        self.completed = 0

    @property
    def inflight(self) -> int:
        """Steps executing now."""
        return len(self._inflight)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn)

    def _emit(self, events: list[Envelope] | None) -> None:
        if self.observer is not None and events:
            try:
                self.observer(events)
            except Exception:  # an observer must never break the runtime
                log.exception("event observer failed")

    async def run(self, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
        """Work until `stop` is set (finishing what is in flight) or, with `until_idle`, all runs end."""
        stop = stop or asyncio.Event()
        lease_s = self.scheduler.config.lease_ms / 1000
        loop = asyncio.get_running_loop()
        next_reap = 0.0
        next_heartbeat = loop.time() + lease_s / 3  # nothing is in flight before the first claim grants a lease

        def wake() -> None:  # from the store's thread
            loop.call_soon_threadsafe(self._ready)

        unsubscribe: Callable[[], None] | None = None  # wake-ups are asked for only while idle
        stopping = asyncio.create_task(self._wake_when(stop))  # an idle worker stops without its poll tick
        try:
            while True:
                now = loop.time()
                if unsubscribe is not None and self._inflight:  # busy: its own poll ticks find new work
                    unsubscribe()
                    unsubscribe = None
                if now - self._claimed_at >= self.poll_interval_s:  # the poll: steps may have become due
                    self._look = True  # since (a retry's backoff ended, a wake-up came while busy)
                if self._done:
                    await self._flush(0 if stop.is_set() else self.concurrency - len(self._inflight))
                if now >= next_reap:
                    self._emit(await self._tx(lambda tx, t: self.scheduler.reap(tx, t)))
                    next_reap = now + min(lease_s / 2, 5.0)
                if self._inflight and now >= next_heartbeat:
                    await self._heartbeat()
                    next_heartbeat = now + lease_s / 3
                claimed = 0
                if not stop.is_set():
                    room = self.concurrency - len(self._inflight)
                    if room > 0 and self._look:
                        claimed = await self._claim(min(room, self.scheduler.config.claim_batch))
                elif not self._inflight and not self._done:
                    return
                if claimed or self._done:
                    continue
                if until_idle and not self._inflight and await self._call(self.store.count_open_runs) == 0:
                    return
                if unsubscribe is None and not self._inflight:  # idle: be woken from now on
                    unsubscribe = self.store.on_ready(wake)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # the poll tick above then looks again
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
        finally:
            stopping.cancel()
            if unsubscribe is not None:
                unsubscribe()
            for _, task in self._inflight.values():
                task.cancel()
            self._db.shutdown(wait=True)

    async def _wake_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _tx(self, fn: Callable[..., list[Envelope]]) -> list[Envelope] | None:
        """Run `fn(tx, now)` in one transaction on the DB thread; None when the store failed."""

        def work() -> list[Envelope]:
            with self.store.transaction() as tx:
                return fn(tx, self.clock.now_us())

        try:
            return await self._call(work)
        except StoreError as exc:
            log.warning("store unavailable, will retry: %s", exc)
            await asyncio.sleep(self.poll_interval_s * 10)
            return None

    async def _claim(self, limit: int) -> int:
        claims: list[Claim] = []

        def fn(tx: object, now: int) -> list[Envelope]:
            got, events = self.scheduler.claim(tx, self.worker_id, now, limit)  # type: ignore[arg-type]
            claims.extend(got)
            return events

        signals = self._signals
        self._claimed_at = asyncio.get_running_loop().time()
        events = await self._tx(fn)
        if events is None:  # rolled back: nothing was leased
            return 0
        self._emit(events)
        self._start(claims)
        # a full batch, steps left queued (an agent's units beyond the room) or a wake-up since: claim again
        self._look = len(claims) >= limit or self._left_queued(events, claims) or self._signals != signals
        return len(claims) or int(self._look)

    async def _flush(self, room: int) -> None:
        """Complete what finished; lease at once (up to `room`) the next units of the agents it woke."""
        outcomes, self._done = self._done, []
        accepted: list[Outcome] = []
        claims: list[Claim] = []

        def fn(tx: object, now: int) -> list[Envelope]:
            ok, got, events = self.scheduler.complete_and_claim(tx, outcomes, now, self.worker_id,  # type: ignore[arg-type]
                                                                room)
            accepted.extend(ok)
            claims.extend(got)
            return events

        events = await self._tx(fn)
        if events is None:  # the store was unavailable: keep the outcomes for the next flush
            self._done = outcomes + self._done
            return
        self.completed += len(accepted)
        self._emit(events)
        self._start(claims)
        if self._left_queued(events, claims) or any(e.kind is K.STEP_RETRY_SCHEDULED for e in events):
            self._look = True

    def _ready(self) -> None:
        """Another transaction queued ready steps (this process or, on PostgreSQL, any other)."""
        self._look = True
        self._signals += 1
        self._wake.set()

    def _start(self, claims: list[Claim]) -> None:
        for c in claims:
            self._inflight[(c.run.id, c.step.step_id)] = (c, asyncio.create_task(self._execute(c)))

    @staticmethod
    def _left_queued(events: list[Envelope], claims: list[Claim]) -> bool:
        """Some step these events queued was not leased with them."""
        leased = {(c.run.id, c.step.step_id) for c in claims}
        return any(e.kind is K.STEP_QUEUED and (e.run_id, e.step_id) not in leased for e in events)

    async def _heartbeat(self) -> None:
        claims = [c for c, _ in self._inflight.values()] + list(self._units.values())
        lost: list[Claim] = []

        def fn(tx: object, now: int) -> list[Envelope]:
            lost.extend(self.scheduler.extend_leases(tx, claims, now))  # type: ignore[arg-type]
            return []

        await self._tx(fn)
        for c in lost:  # another worker owns it now: stop running it here
            entry = self._inflight.pop((c.run.id, c.step.step_id), None)
            if entry is not None:
                entry[1].cancel()
                log.warning("lease lost for %s/%s attempt %d", c.run.id, c.step.step_id, c.attempt)

    async def _execute(self, claim: Claim) -> None:
        executor = self.executors[claim.step.type]
        deadline_s = claim.spec.execution.deadline_ms / 1000
        units = HeldUnits(self, claim) if holds_worker(claim.spec) and claim.step.type == StepType.AGENT else None
        ctx = ExecutionContext(run_id=claim.run.id, step=claim.spec, attempt=claim.attempt, seed=claim.run.seed,
                               inputs=claim.inputs, deadline_s=deadline_s, workspace=claim.run.workspace,
                               app=claim.run.app, units=units)
        outcome = Outcome(claim, 0)
        try:
            if claim.invalid is not None:  # inputs that did not resolve: nothing to run
                raise StepFailure(ErrorKind.VALIDATION, claim.invalid)
            async with asyncio.timeout(deadline_s):  # no extra task per step, unlike wait_for
                result = await executor.execute(ctx)
            limit = self.scheduler.config.max_output_bytes
            size = 0 if fits(result.output, limit) else len(json.dumps(result.output, default=str))
            if size > limit:
                raise StepFailure(ErrorKind.VALIDATION, f"output of {size} bytes exceeds the limit of "
                                  f"{self.scheduler.config.max_output_bytes}", usage=result.usage,
                                  tool=result.tool, provider=result.provider)
            outcome.result = result
        except StepFailure as failure:
            outcome.failure = failure
        except TimeoutError:
            outcome.failure = StepFailure(ErrorKind.TIMEOUT, f"deadline of {deadline_s:g}s exceeded")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an executor bug is a crash of this attempt, not of the worker
            # cut long, not short: the scheduler redacts the message before it keeps 500 characters
            outcome.failure = StepFailure(ErrorKind.CRASH, f"{type(exc).__name__}: {exc}"[:4000])
        outcome.finished_us = self.clock.now_us()
        self._inflight.pop((claim.run.id, claim.step.step_id), None)
        self._done.append(outcome)
        self._wake.set()

