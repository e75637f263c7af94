"""The runtime facade: validate and submit runs, cancel them, and make workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fleetforge.core.config import RuntimeConfig
from fleetforge.core.policies.pii import redact_spec
from fleetforge.core.policies.registry import option_validators
from fleetforge.core.scheduler import Scheduler
from fleetforge.core.submit import build_run
from fleetforge.core.worker import Observer, Worker
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.domain.models import RunSpec
from fleetforge.domain.spec import StepMemo, parse_spec, spec_to_dict
from fleetforge.domain.steptypes import STEP_TYPES, StepTypeSpec
from fleetforge.domain.stored_spec import parse_stored_spec
from fleetforge.ports.clock import Clock, SystemClock
from fleetforge.ports.executor import Executor
from fleetforge.ports.policy import PolicyPack
from fleetforge.ports.store import Store

__all__ = ["MAX_IDEMPOTENCY_KEY", "Runtime"]

MAX_IDEMPOTENCY_KEY: Final = 255


class Runtime:
    """Everything a process needs to submit, cancel and execute runs against one store."""

    def __init__(
        self,
        store: Store,
        *,
        executors: dict[str, Executor],
        packs: Mapping[str, PolicyPack],
        config: RuntimeConfig | None = None,
        clock: Clock | None = None,
        observer: Observer | None = None,
        step_types: Mapping[str, StepTypeSpec] = STEP_TYPES,
    ) -> None:
        self.store = store
        self.step_types = step_types
        self.executors = executors
        self.packs = packs
        self.clock = clock or SystemClock()
        self.observer = observer
        self._validators = validators = option_validators(packs)
        self._memo: StepMemo = {}
        # the scheduler reads specs this runtime stored, validated at submit (see parse_stored_spec)
        self.scheduler = Scheduler(executors=executors, packs=packs, config=config,
                                   parse=lambda d: parse_stored_spec(d, packs=validators))

    def parse(self, data: Mapping[str, Any]) -> RunSpec:
        """Validate a spec mapping; raises SpecError naming every problem."""
        return parse_spec(data, packs=self._validators, step_types=self.step_types, memo=self._memo)

    def submit(self, spec: RunSpec | Mapping[str, Any], *, run_id: str | None = None,
               idempotency_key: str | None = None) -> str:
        """Validate (when given a mapping) and store a run in one transaction; returns its id.

        When the run's packs redact PII, its labels and step inputs are redacted first: the clear
        text is never stored, nor is it in any event. With `idempotency_key`, a key already used
        returns the id of the run it was first used for and stores nothing.
        """
        if idempotency_key is not None and not (
                isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY):
            raise SpecError([f"idempotency_key: got {idempotency_key!r:.80}, expected a non-empty string of at "
                             f"most {MAX_IDEMPOTENCY_KEY} characters"])
        parsed = redact_spec(spec if isinstance(spec, RunSpec) else self.parse(spec))
        now = self.clock.now_us()
        run, steps, deps = build_run(parsed, spec_to_dict(parsed), now, run_id)
        with self.store.transaction() as tx:
            if idempotency_key is not None:
                holder = tx.claim_idempotency_key(idempotency_key, run.id, now)
                if holder != run.id:
                    return holder
            events = self.scheduler.submit(tx, run, steps, deps, parsed, now)
        self._emit(events)
        return run.id

    def cancel(self, run_id: str) -> bool:
        """Cancel a run; False when it had already ended. Raises NotFoundError for unknown ids."""
        if self.store.get_run(run_id) is None:
            raise NotFoundError(f"no run {run_id!r}; list runs with `fleetforge runs list`")
        with self.store.transaction() as tx:
            events = self.scheduler.cancel(tx, run_id, self.clock.now_us())
        self._emit(events)
        return bool(events)

    def worker(self, worker_id: str, *, concurrency: int = 16, poll_interval_s: float = 0.05) -> Worker:
        return Worker(self.store, self.scheduler, self.executors, worker_id=worker_id,
                      concurrency=concurrency, poll_interval_s=poll_interval_s, clock=self.clock,
                      observer=self.observer)

    def _emit(self, events: list[Envelope]) -> None:
        if self.observer is not None and events:
            self.observer(events)
