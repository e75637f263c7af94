"""Test doubles for our own logic: a clock moved by hand and an executor that follows a script.

They stand in for time and for step execution only; stores, policies and the scheduler under test
are always the real ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.config import RuntimeConfig
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.runtime import Runtime
from fleetforge.core.scheduler import Claim, Outcome
from fleetforge.core.summary import summary_from_events, summary_from_store
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import BudgetRow, ErrorKind, StepRow, StepSpec, StepType
from fleetforge.domain.names import CATALOG, RUN_KINDS, TERMINAL_ATTEMPT_KINDS, EventKind
from fleetforge.ports.clock import Clock
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, Executor, StepFailure, Usage

__all__ = [
    "Fail",
    "FakeClock",
    "Hang",
    "Harness",
    "Ok",
    "ScriptedExecutor",
    "Step",
    "check_envelope",
    "llm",
    "tool",
]

START_US = 1_700_000_000_000_000


class FakeClock:
    """A `ports.clock.Clock` that only moves when told to."""

    def __init__(self, now_us: int = START_US) -> None:
        self.now = now_us

    def now_us(self) -> int:
        return self.now

    def advance(self, *, us: int = 0, ms: float = 0, s: float = 0) -> int:
        """Move forward; returns the new time in microseconds."""
        self.now += us + int(ms * 1_000) + int(s * 1_000_000)
        return self.now


@dataclass(frozen=True, slots=True)
class Ok:
    """A successful attempt with this output and usage."""

    output: dict[str, Any] = field(default_factory=lambda: {"ok": True})
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""


@dataclass(frozen=True, slots=True)
class Fail:
    """A failed attempt of this kind."""

    kind: ErrorKind
    message: str = "scripted failure"
    retry_after_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Hang:
    """An attempt that waits on `release` (or forever), then succeeds; for deadline and cancel tests."""

    release: asyncio.Event | None = None
    then: Ok = field(default_factory=Ok)


Step = Ok | Fail | Hang


class ScriptedExecutor:
    """A `ports.executor.Executor` whose attempts follow a per-step script (default: succeed).

    `script[step_id]` is consumed one entry per attempt; when it runs out, attempts succeed.
    Every context received is kept in `calls`, so tests see the inputs after policies.
    """

    def __init__(
        self,
        script: dict[str, Iterable[Step]] | None = None,
        *,
        estimate: tuple[int, float] = (0, 0.0),
        provider: str = "fake",
    ) -> None:
        self.script: dict[str, deque[Step]] = defaultdict(deque)
        for step_id, steps in (script or {}).items():
            self.script[step_id].extend(steps)
        self._estimate = estimate
        self.provider = provider
        self.calls: list[ExecutionContext] = []

    def add(self, step_id: str, *steps: Step) -> None:
        self.script[step_id].extend(steps)

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        return self._estimate

    def target(self, step: StepSpec) -> tuple[str, str]:
        tool = step.inputs.get("tool") or step.inputs.get("model") or "scripted"
        return str(tool), self.provider

    def started(self, step_id: str) -> list[ExecutionContext]:
        return [c for c in self.calls if c.step.id == step_id]

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        self.calls.append(ctx)
        queue = self.script.get(ctx.step.id)
        entry: Step = queue.popleft() if queue else Ok()
        tool, provider = self.target(ctx.step)
        if isinstance(entry, Hang):
            if entry.release is None:
                await asyncio.Event().wait()
            else:
                await entry.release.wait()
            entry = entry.then
        if isinstance(entry, Fail):
            raise StepFailure(entry.kind, entry.message, tool=tool, provider=provider,
                              retry_after_s=entry.retry_after_s,
                              usage=Usage(entry.input_tokens, entry.output_tokens, 0, entry.cost_usd))
        return ExecutionResult(dict(entry.output), Usage(entry.input_tokens, entry.output_tokens, 0,
                                                         entry.cost_usd),
                               tool=tool, provider=provider, model=entry.model)


# ---- a runtime over a real SQLite store, driven step by step ------------------------------------

_RFC3339_US = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")
ENVELOPE_KEYS = frozenset(
    {"id", "kind", "schema_version", "occurred_at", "run_id", "step_id", "attempt", "workspace", "app",
     "trace", "payload"}
)


def check_envelope(env: dict[str, Any]) -> None:
    """Assert `env` has the DESIGN §3 shape and exactly the catalog's payload fields for its kind."""
    assert set(env) == ENVELOPE_KEYS, env
    assert str(uuid.UUID(env["id"])) == env["id"]
    assert env["schema_version"] == 1
    assert _RFC3339_US.fullmatch(env["occurred_at"]), env["occurred_at"]
    kind = EventKind(env["kind"])
    if kind in RUN_KINDS:
        assert env["step_id"] is None and env["attempt"] == 0, env
    else:
        assert isinstance(env["step_id"], str) and env["step_id"], env
        assert isinstance(env["attempt"], int) and env["attempt"] >= 0
    trace = env["trace"]
    match = _TRACEPARENT.fullmatch(trace["traceparent"])
    assert match is not None, trace
    assert match.groups() == (trace["trace_id"], trace["span_id"])
    assert trace["trace_id"] != "0" * 32
    fields = {f.name for f in CATALOG[kind].fields}
    required = {f.name for f in CATALOG[kind].fields if not f.optional}
    assert required <= set(env["payload"]) <= fields, (kind, fields ^ set(env["payload"]))


class Harness:
    """A Runtime on a SQLite file with a FakeClock and one ScriptedExecutor for every step type.

    Tests call the Scheduler's transactions one at a time (`claim`, `finish`, `reap`, `cancel`)
    at the fake time of their choosing, or run a real Worker with `drain`.
    """

    def __init__(self, path: Path, *, config: RuntimeConfig | None = None,
                 executor: ScriptedExecutor | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.store = SqliteStore(path, clock=self.clock)
        self.store.migrate()
        self.ex = executor or ScriptedExecutor()
        execs: dict[StepType, Executor] = {t: self.ex for t in StepType}
        self.rt = Runtime(self.store, executors=execs, packs=default_packs(), config=config, clock=self.clock)
        self.scheduler = self.rt.scheduler

    def now(self) -> int:
        return self.clock.now_us()

    def advance(self, **kw: float) -> int:
        assert isinstance(self.clock, FakeClock)
        return self.clock.advance(**kw)  # type: ignore[arg-type]

    def submit(self, *steps: dict[str, Any], **run: Any) -> str:
        return self.rt.submit({"steps": list(steps), **run})

    def claim(self, worker: str = "w1", limit: int = 32) -> list[Claim]:
        with self.store.transaction() as tx:
            claims, _ = self.scheduler.claim(tx, worker, self.now(), limit)
        return claims

    def finish(self, claim: Claim, entry: Step | None = None) -> list[Claim]:
        """Complete `claim` now with `entry` (default: success); returns it when accepted, else []."""
        entry = entry or Ok()
        outcome = Outcome(claim, self.now())
        usage = Usage(entry.input_tokens, entry.output_tokens, 0, entry.cost_usd)  # type: ignore[union-attr]
        tool, provider = self.ex.target(claim.spec)
        if isinstance(entry, Fail):
            outcome.failure = StepFailure(entry.kind, entry.message, usage=usage, tool=tool, provider=provider,
                                          retry_after_s=entry.retry_after_s)
        else:
            assert isinstance(entry, Ok)
            outcome.result = ExecutionResult(dict(entry.output), usage, tool, provider, entry.model)
        with self.store.transaction() as tx:
            accepted, _ = self.scheduler.complete(tx, [outcome], self.now())
        return [o.claim for o in accepted]

    def reap(self) -> list[Envelope]:
        with self.store.transaction() as tx:
            return self.scheduler.reap(tx, self.now())

    def extend(self, *claims: Claim) -> list[Claim]:
        with self.store.transaction() as tx:
            return self.scheduler.extend_leases(tx, claims, self.now())

    def cancel(self, run_id: str) -> bool:
        return self.rt.cancel(run_id)

    def drain(self, worker: str = "w", concurrency: int = 8) -> None:
        """Run a real Worker until no run is open."""
        asyncio.run(self.rt.worker(worker, concurrency=concurrency, poll_interval_s=0.001).run(until_idle=True))

    # -- reading back ----------------------------------------------------------------------------

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Outbox envelopes in commit order (of one run when given); each checked for shape."""
        out = []
        for rec in self.store.iter_outbox():
            env = json.loads(rec.envelope)
            check_envelope(env)
            assert (rec.event_id, rec.kind, rec.run_id) == (env["id"], env["kind"], env["run_id"])
            if run_id is None or env["run_id"] == run_id:
                out.append(env)
        return out

    def kinds(self, run_id: str, step_id: str | None = None) -> list[str]:
        return [e["kind"] for e in self.events(run_id) if step_id is None or e["step_id"] == step_id]

    def of(self, run_id: str, kind: str, step_id: str | None = None) -> list[dict[str, Any]]:
        """Payloads (with attempt and step_id merged in) of the run's events of `kind`."""
        return [{**e["payload"], "attempt": e["attempt"], "step_id": e["step_id"]} for e in self.events(run_id)
                if e["kind"] == kind and (step_id is None or e["step_id"] == step_id)]

    def step(self, run_id: str, step_id: str) -> StepRow:
        return next(s for s in self.store.get_steps(run_id) if s.step_id == step_id)

    def status(self, run_id: str) -> tuple[str, dict[str, str]]:
        run = self.store.get_run(run_id)
        assert run is not None
        return str(run.status), {s.step_id: str(s.status) for s in self.store.get_steps(run_id)}

    def budget(self, scope: str) -> BudgetRow | None:
        with self.store.transaction() as tx:
            return tx.lock_budgets([scope]).get(scope)

    def summaries_agree(self) -> dict[str, Any]:
        """summary_from_events(outbox) == summary_from_store; returns it."""
        from_store = summary_from_store(self.store)
        from_events = summary_from_events(r.envelope for r in self.store.iter_outbox())
        assert from_events == from_store
        return from_store

    def one_terminal_event_per_attempt(self) -> None:
        """Exactly one step_succeeded|step_failed|step_denied per attempts-ledger row, and no other."""
        ledger = sorted((a.run_id, a.step_id, a.attempt) for r in self.store.list_runs(limit=10_000)
                        for a in self.store.get_attempts(r.id))
        terminal = sorted((e["run_id"], e["step_id"], e["attempt"]) for e in self.events()
                          if EventKind(e["kind"]) in TERMINAL_ATTEMPT_KINDS)
        assert terminal == ledger


def tool(step_id: str, *deps: str, execution: dict[str, Any] | None = None,
         policy: dict[str, Any] | None = None, **inputs: Any) -> dict[str, Any]:
    """A `tool` step spec (the scripted executor decides what it does)."""
    step: dict[str, Any] = {"id": step_id, "type": "tool", "inputs": {"tool": step_id, **inputs},
                            "depends_on": list(deps)}
    if execution:
        step["execution"] = execution
    if policy:
        step["policy"] = policy
    return step


def llm(step_id: str, prompt: str, *deps: str, execution: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None) -> dict[str, Any]:
    step = tool(step_id, *deps, execution=execution, policy=policy)
    step.update(type="llm", inputs={"model": "fake-model", "prompt": prompt})
    return step
