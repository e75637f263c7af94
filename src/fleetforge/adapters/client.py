"""The Python client: submit runs (idempotently), wait for them, stream their events, cancel, list, and run
a worker with Python tools in-process. The same store and defaults as the command line."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx

from fleetforge.adapters import operations
from fleetforge.adapters.cli.wiring import build_runtime, store_for
from fleetforge.adapters.executors.pytools import register_tools
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.process import process_id
from fleetforge.core import control
from fleetforge.core.pricing import PriceTable
from fleetforge.core.replay_report import ReplayReport, Tolerance
from fleetforge.core.runtime import Runtime
from fleetforge.core.worker import Worker
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError, NotFoundError, SpecError
from fleetforge.domain.models import RunRow, RunStatus
from fleetforge.domain.names import EventKind
from fleetforge.domain.spec import MAX_SPEC_BYTES, decode_spec_bytes, load_spec_text
from fleetforge.ports.store import OutboxPosition, Store

__all__ = ["Client", "InProcessWorker", "RunHandle", "RunInfo", "RunResult", "StepResult"]

T = TypeVar("T")
TERMINAL: Final = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED})
TERMINAL_EVENTS: Final = frozenset({EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED, EventKind.RUN_CANCELED})
STATUSES: Final = tuple(s.value for s in RunStatus)
_OUTBOX_BATCH: Final = 1000
_PRUNED_GRACE_S: Final = 2.0  # a terminal run whose terminal event never shows up had its events pruned
_worker_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step as `fleetforge runs get` shows it, with its output once it succeeded."""

    step_id: str
    type: str
    status: str
    attempts: int
    error_kind: str
    output: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """A run's state: status, run outputs (None when the run has none), error kind (None unless failed)."""

    run_id: str
    status: str
    outputs: Any
    error: str | None
    steps: dict[str, StepResult] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True once the run succeeded, failed or was canceled."""
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A line of `client.runs()`, as `fleetforge runs list --json` prints it (times in µs since the epoch)."""

    run_id: str
    workspace: str
    app: str
    status: str
    created_us: int
    finished_us: int | None
    error_kind: str


class RunHandle:
    """A submitted run: its id, state, events, and cancel."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._first: OutboxPosition | None = None  # just before the run's first event, once found

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def _row(self) -> RunRow:
        run = self.client.store.get_run(self.run_id)
        if run is None:
            raise NotFoundError(f"no run {self.run_id!r}; list runs with client.runs()")
        return run

    def status(self) -> str:
        """queued, running, succeeded, failed or canceled."""
        return str(self._row().status)

    def result(self) -> RunResult:
        """The run's state now (see `wait`)."""
        run = self._row()
        steps = {s.step_id: StepResult(s.step_id, str(s.type), str(s.status), s.attempt, s.error_kind, s.output)
                 for s in self.client.store.get_steps(self.run_id)}
        outputs = getattr(run, "outputs", None)  # run outputs, on stores that keep them
        return RunResult(self.run_id, str(run.status), outputs, run.error_kind or None, steps)

    def wait(self, timeout: float | None = None, *, poll_interval: float = 0.05) -> RunResult:
        """Block until the run ends; TimeoutError after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._row().status in TERMINAL:
                return self.result()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.run_id} still {self.status()} after {timeout:g}s")
            time.sleep(poll_interval)

    def events(self, timeout: float | None = None, *, poll_interval: float = 0.05) -> Iterator[Envelope]:
        """The run's events in commit order, as they commit, ending with its terminal event.

        Reads the outbox with a position cursor; TimeoutError when the run has not ended after
        `timeout` seconds (None: no limit).
        """
        store = self.client.store
        deadline = None if timeout is None else time.monotonic() + timeout
        position: OutboxPosition = self._first or (0, 0)
        quiet_since: float | None = None
        while True:
            batch = store.read_outbox(position, _OUTBOX_BATCH)
            for record in batch:
                before, position = position, record.position
                if record.run_id != self.run_id:
                    continue
                if self._first is None:
                    self._first = before
                event = Envelope.from_json(record.envelope)
                yield event
                if event.kind in TERMINAL_EVENTS:
                    return
            if len(batch) == _OUTBOX_BATCH:
                continue
            now = time.monotonic()
            if self._row().status in TERMINAL:  # its terminal event committed with the status
                quiet_since = quiet_since or now
                if not batch and now - quiet_since > _PRUNED_GRACE_S:
                    return  # retention pruned it
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"run {self.run_id} did not end within {timeout:g}s")
            time.sleep(poll_interval)

    def cancel(self) -> bool:
        """Cancel the run; False when it had already ended."""
        return self.client._with_runtime(lambda rt: rt.cancel(self.run_id))

    def approve(self, step: str, reason: str | None = None, actor: str | None = None) -> None:
        """Approve `step` (or an agent's tool call) waiting for approval (actor: the OS user by default)."""
        self.client.approve(self.run_id, step, reason, actor)

    def deny(self, step: str, reason: str, actor: str | None = None) -> None:
        """Deny `step` waiting for approval, with a reason."""
        self.client.deny(self.run_id, step, reason, actor)

    def pause(self, actor: str | None = None) -> bool:
        """Pause the run: no new step starts; False when it was already paused."""
        return self.client.pause(self.run_id, actor)

    def resume(self, patch: Mapping[str, Any] | None = None, actor: str | None = None) -> list[str]:
        """Resume the paused run; `patch` maps step ids (not started) to new inputs. The patched ids."""
        return self.client.resume(self.run_id, patch, actor)


class Client:
    """FleetForge from Python, on the store the CLI uses: `store_url` (else FLEETFORGE_STORE_URL), else the
    SQLite store under `data_dir` (else FLEETFORGE_DATA_DIR, else ./.fleetforge).

    `store` injects an opened store instead (it is migrated, and closed with the client). `tools` are
    registered for submit (step validation) and for every in-process worker.

    Given an API URL (``http://`` or ``https://``, a `fleetforge serve`), the client is an `ApiClient`
    (adapters/api/remote.py) with the same methods, authenticated by `token` (else FLEETFORGE_API_TOKEN).
    """

    def __new__(cls, store_url: str | None = None, *args: Any, **kwargs: Any) -> Client:
        if cls is Client and isinstance(store_url, str) and store_url.lower().startswith(("http://", "https://")):
            from fleetforge.adapters.api.remote import ApiClient

            return super().__new__(ApiClient)
        return super().__new__(cls)

    def __init__(self, store_url: str | None = None, data_dir: str | Path | None = None, *,
                 store: Store | None = None, tools: Iterable[Any] = (), token: str | None = None) -> None:
        if token is not None:
            raise ConfigError("token: only an API URL (http:// or https://, a `fleetforge serve`) takes a token; "
                              "a store URL is opened directly")
        if store is None:
            url = store_url or os.environ.get("FLEETFORGE_STORE_URL") or None
            folder = data_dir or os.environ.get("FLEETFORGE_DATA_DIR") or None
            store = store_for(url, Path(folder) if folder is not None else None)
        else:
            store.migrate()
        self.store = store
        self.tools = register_demo_tools(ToolRegistry())
        register_tools(self.tools, list(tools))
        self._http: httpx.AsyncClient | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store's connections."""
        http, self._http = self._http, None
        if http is not None:
            _run_async(http.aclose())
        self.store.close()

    def add_tools(self, tools: Iterable[Any]) -> None:
        """Register more tools (decorated with @fleetforge.tool, or typed functions)."""
        register_tools(self.tools, list(tools))

    def _with_runtime(self, fn: Callable[[Runtime], T]) -> T:
        """Call `fn` with a runtime on this client's store and tools (submit and cancel send no request)."""
        with self._lock:
            if self._http is None:
                self._http = httpx.AsyncClient()
        return fn(build_runtime(self.store, self._http, tools=self.tools))

    def submit(self, spec: Mapping[str, Any] | str | Path, idempotency_key: str | None = None) -> RunHandle:
        """Validate and store a run; `spec` is a mapping, YAML/JSON text or a file path.

        The same `idempotency_key` always gives the same run, stored once (concurrent submits too).
        Raises SpecError naming every problem; nothing is stored then.
        """
        data = spec_data(spec)
        return RunHandle(self, self._with_runtime(lambda rt: rt.submit(data, idempotency_key=idempotency_key)))

    def approve(self, run_id: str, step: str, reason: str | None = None, actor: str | None = None) -> None:
        """Approve a step of a run waiting for approval (see `RunHandle.approve`)."""
        self._with_runtime(lambda rt: control.approve(rt, run_id, step, reason=reason, actor=actor))

    def deny(self, run_id: str, step: str, reason: str, actor: str | None = None) -> None:
        """Deny a step of a run waiting for approval (see `RunHandle.deny`)."""
        self._with_runtime(lambda rt: control.deny(rt, run_id, step, reason, actor=actor))

    def pause(self, run_id: str, actor: str | None = None) -> bool:
        """Pause a run (see `RunHandle.pause`)."""
        return self._with_runtime(lambda rt: control.pause(rt, run_id, actor=actor))

    def resume(self, run_id: str, patch: Mapping[str, Any] | None = None, actor: str | None = None) -> list[str]:
        """Resume a paused run (see `RunHandle.resume`)."""
        return self._with_runtime(lambda rt: control.resume(rt, run_id, patches=patch, actor=actor))

    def run(self, run_id: str) -> RunHandle:
        """A handle on an existing run; NotFoundError when there is none."""
        handle = RunHandle(self, run_id)
        handle.status()
        return handle

    def fork(self, run_id: str, from_step: str, patch: Mapping[str, Mapping[str, Any]] | None = None,
             actor: str | None = None) -> RunHandle:
        """A new run that reuses `run_id`'s recorded results before `from_step` (a step, or an agent turn
        such as "agent.t3") and runs the rest; `patch` gives new inputs to steps it runs again.

        NotFoundError for an unknown run, SpecError for an unknown step or a bad patch (nothing stored)."""
        return RunHandle(self, operations.fork(self.store, run_id, from_step, patch=patch, actor=actor or ""))

    def replay(self, run_id: str, *, tolerance_tokens: int = 0, tolerance_cost_usd: float = 0.0,
               prices: PriceTable | None = None, timeout: float = 300.0) -> ReplayReport:
        """Execute `run_id` again in a scratch store with every llm/tool/http result from the record, and
        report step by step whether it reproduced the record; `.ok` is False past the tolerance. With
        `prices`, the recorded LLM tokens are priced with them (the cost drift is the price change)."""
        tolerance = Tolerance(tolerance_tokens, tolerance_cost_usd)
        reports = _run_async(operations.replay(self.store, [run_id], tolerance=tolerance, tools=self.tools,
                                               prices=prices, timeout_s=timeout))
        return reports[0]

    def runs(self, status: str | None = None, workspace: str | None = None, limit: int = 50) -> list[RunInfo]:
        """The most recent runs, newest first."""
        check_runs_query(status, limit)
        return [RunInfo(r.id, r.workspace, r.app, str(r.status), r.created_us, r.finished_us, r.error_kind)
                for r in self.store.list_runs(status=status, workspace=workspace, limit=limit)]

    def worker(self, tools: Iterable[Any] = (), *, concurrency: int = 16, poll_interval_s: float = 0.05,
               worker_id: str | None = None) -> InProcessWorker:
        """A worker with these tools, run by ``with client.worker(tools=[...]):`` in a background thread."""
        self.add_tools(tools)
        return InProcessWorker(self, concurrency=concurrency, poll_interval_s=poll_interval_s,
                               worker_id=worker_id)

    def run_until_idle(self, tools: Iterable[Any] = (), *, concurrency: int = 16, poll_interval_s: float = 0.05,
                       timeout: float | None = None) -> int:
        """Work in-process until no run of the store is open; the number of attempts completed."""
        worker = self.worker(tools, concurrency=concurrency, poll_interval_s=poll_interval_s)
        worker.start(until_idle=True)
        return worker.join(timeout)


class InProcessWorker:
    """A worker on its own event loop in a background thread; leaving the `with` block drains it."""

    def __init__(self, client: Client, *, concurrency: int, poll_interval_s: float, worker_id: str | None) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 4096:
            raise ValueError(f"concurrency: got {concurrency!r}, expected an integer from 1 to 4096")
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s: got {poll_interval_s!r}, expected a number > 0")
        self.client = client
        self.worker_id = worker_id or f"{process_id()}-py{next(_worker_numbers)}"
        self._concurrency = concurrency
        self._poll = poll_interval_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._worker: Worker | None = None
        self._error: BaseException | None = None

    @property
    def completed(self) -> int:
        """Attempts this worker completed so far."""
        return self._worker.completed if self._worker is not None else 0

    def start(self, *, until_idle: bool = False) -> InProcessWorker:
        """Start the thread (once); returns when the worker is running."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self.worker_id} was already started")
        self._thread = threading.Thread(target=self._main, args=(until_idle,), name=f"fleetforge-{self.worker_id}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def _main(self, until_idle: bool) -> None:
        async def go() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                async with httpx.AsyncClient() as http:
                    runtime: Runtime = build_runtime(self.client.store, http, tools=self.client.tools)
                    self._worker = runtime.worker(self.worker_id, concurrency=self._concurrency,
                                                  poll_interval_s=self._poll)
                    self._ready.set()
                    await self._worker.run(stop=self._stop, until_idle=until_idle)
            finally:
                self._ready.set()

        try:
            asyncio.run(go())
        except BaseException as exc:  # handed to the thread that joins
            self._error = exc

    def stop(self) -> None:
        """Ask the worker to finish what is in flight and stop."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the worker has stopped
                loop.call_soon_threadsafe(stop.set)

    def join(self, timeout: float | None = None) -> int:
        """Wait for the thread to end; the attempts completed. Re-raises what stopped the worker."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"worker {self.worker_id} still running after {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self.completed

    def __enter__(self) -> InProcessWorker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.join()


def check_runs_query(status: str | None, limit: int) -> None:
    """ValueError naming a bad `runs()` argument."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status: got {status!r}, expected one of {', '.join(STATUSES)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit: got {limit!r}, expected an integer from 1 to 10000")


def spec_data(spec: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(spec, Path):
        try:
            raw = spec.read_bytes()[:MAX_SPEC_BYTES + 1]
        except OSError as exc:
            raise SpecError([f"spec: cannot read file {str(spec)!r}: {exc.strerror or exc}"]) from None
        return load_spec_text(decode_spec_bytes(raw, source=str(spec)), source=str(spec))
    if isinstance(spec, str):
        return load_spec_text(spec, source="<spec>")
    if isinstance(spec, Mapping):
        return dict(spec)
    raise SpecError([f"spec: got {type(spec).__name__}, expected a mapping, YAML/JSON text or a Path"])


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion, also when the calling thread already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]
