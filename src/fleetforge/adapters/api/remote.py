"""The Python client over the HTTP API: `Client("http://host:8787", token=...)` is an `ApiClient`.

Same methods as on a store URL (submit with an idempotency key, run, runs, approve, deny, pause, resume,
fork, replay, and on a handle status, result, wait, events, cancel, approve, deny, pause, resume); errors
are the same exceptions (SpecError, NotFoundError, ConflictError, ValueError...).
Events come from the server's SSE stream, resumed with `Last-Event-ID` when the connection drops.
Workers need the store: `worker()` and `run_until_idle()` say so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import quote

import httpx

from fleetforge.adapters.client import (
    Client,
    InProcessWorker,
    RunHandle,
    RunInfo,
    RunResult,
    StepResult,
    check_runs_query,
    spec_data,
)
from fleetforge.adapters.executors.pytools import register_tools
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.core.pricing import PriceTable
from fleetforge.core.replay_report import ReplayReport, StepReport, Tolerance
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import (
    ConfigError,
    ConflictError,
    FleetForgeError,
    NotFoundError,
    SpecError,
    StoreUnavailable,
)
from fleetforge.domain.money import to_micros
from fleetforge.domain.secrets import redact_url
from fleetforge.domain.tokens import Forbidden, Scope, Unauthorized
from fleetforge.ports.store import Store

__all__ = ["TOKEN_ENV", "ApiClient", "ApiError", "ApiRunHandle", "replay_report", "sse_events"]

TOKEN_ENV: Final = "FLEETFORGE_API_TOKEN"
_END_KINDS: Final = frozenset({"run_succeeded", "run_failed", "run_canceled"})
_RECONNECTS: Final = 5
_NO_WORKER: Final = ("a worker needs the store: run `fleetforge worker` beside `fleetforge serve`, or use "
                     "Client(store_url) in the worker's process")


class ApiError(FleetForgeError):
    """The API answered with an error this client has no closer exception for; `status` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _raise(response: httpx.Response) -> NoReturn:
    try:
        doc = response.json()
    except ValueError:
        doc = {}
    message = str(doc.get("error") or response.reason_phrase) if isinstance(doc, dict) else response.reason_phrase
    problems = doc.get("problems") if isinstance(doc, dict) else None
    status = response.status_code
    if status == 401:
        raise Unauthorized(message)
    if status == 403 and isinstance(doc, dict) and doc.get("held") in set(Scope) and doc.get("needed") in set(Scope):
        raise Forbidden(Scope(doc["held"]), Scope(doc["needed"]))
    if status == 404:
        raise NotFoundError(message)
    if status == 409:
        raise ConflictError(message)
    if status in (400, 422) and isinstance(problems, list):  # an unreadable or invalid spec
        raise SpecError([str(p) for p in problems])
    if status in (400, 413, 415):
        raise ConfigError(message)
    if status == 503:
        raise StoreUnavailable(message)
    raise ApiError(status, message)


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """(id, data) of each event in Server-Sent Events `lines` (comments skipped, multi-line data joined)."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, "\n".join(data)
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value


def _until(lines: Iterator[str], deadline: float | None, run_id: str, timeout: float | None) -> Iterator[str]:
    """`lines` until `deadline` (keep-alive comments arrive between events, so it is checked on each)."""
    for line in lines:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} did not end within {timeout:g}s")
        yield line


class ApiRunHandle(RunHandle):
    """A run reached through the API."""

    client: ApiClient

    def _doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.client._get(f"/v1/runs/{self.run_id}").json()
        return doc

    def status(self) -> str:
        return str(self._doc()["status"])

    def result(self) -> RunResult:
        doc = self._doc()
        steps = {s["step_id"]: StepResult(s["step_id"], s["type"], s["status"], s["attempts"], s["error_kind"],
                                          s.get("output")) for s in doc["steps"]}
        return RunResult(self.run_id, doc["status"], doc.get("outputs"), doc.get("error_kind") or None, steps)

    def wait(self, timeout: float | None = None, *, poll_interval: float = 0.05) -> RunResult:
        """Block until the run ends (following its event stream); TimeoutError after `timeout` seconds."""
        try:
            for _ in self.events(timeout):
                pass
        except TimeoutError:
            raise TimeoutError(f"run {self.run_id} still {self.status()} after {timeout:g}s") from None
        return self.result()

    def events(self, timeout: float | None = None, *, poll_interval: float = 0.05) -> Iterator[Envelope]:
        """The run's events in commit order, as they commit, ending with its terminal event (SSE; a dropped
        connection is resumed after the last event received). TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        drops = 0
        while True:
            headers = {"last-event-id": last} if last else {}
            left = None if deadline is None else max(0.01, deadline - time.monotonic())
            read = self.client.heartbeat_s + 5 if left is None else min(left, self.client.heartbeat_s + 5)
            try:
                with self.client._session.stream("GET", f"/v1/runs/{self.run_id}/events", headers=headers,
                                              timeout=httpx.Timeout(self.client.timeout_s, read=read)) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        response.read()
                        _raise(response)
                    for event_id, data in sse_events(_until(response.iter_lines(), deadline, self.run_id, timeout)):
                        last, drops = event_id or last, 0
                        event = Envelope.from_json(data)
                        yield event
                        if event.kind in _END_KINDS:
                            return
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"run {self.run_id} did not end within {timeout:g}s") from None
                if not isinstance(exc, httpx.ReadTimeout):
                    drops += 1
                    if drops > _RECONNECTS:
                        raise StoreUnavailable(f"the event stream of run {self.run_id} dropped {drops} times in a "
                                               f"row: {exc}") from None
                    time.sleep(min(2.0, 0.1 * 2**drops))
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.run_id} did not end within {timeout:g}s")

    def cancel(self) -> bool:
        return bool(self.client._request("POST", f"/v1/runs/{self.run_id}/cancel").json()["canceled"])


class ApiClient(Client):
    """`Client` over the HTTP API of `fleetforge serve` at `api_url`, with bearer `token`
    (else FLEETFORGE_API_TOKEN). `timeout_s` bounds each request (event streams wait as long as asked)."""

    def __init__(self, store_url: str | None = None, data_dir: str | Path | None = None, *,
                 store: Store | None = None, tools: Iterable[Any] = (), token: str | None = None,
                 timeout_s: float = 30.0, heartbeat_s: float = 15.0) -> None:
        api_url = str(store_url)
        if data_dir is not None or store is not None:
            raise ConfigError("data_dir/store: an API client has no store; pass a store URL to use one directly")
        token = token or os.environ.get(TOKEN_ENV) or None
        if token is None:
            raise ConfigError(f"token: an API URL needs a bearer token; pass token=... or set {TOKEN_ENV} "
                              "(create one with `fleetforge tokens create --scope submit`)")
        self.api_url = api_url.rstrip("/")
        self.timeout_s, self.heartbeat_s = timeout_s, heartbeat_s
        self._session = httpx.Client(base_url=self.api_url, timeout=timeout_s,
                                     headers={"authorization": f"Bearer {token}"})
        self.tools = register_demo_tools(ToolRegistry())
        register_tools(self.tools, list(tools))

    def __repr__(self) -> str:
        return f"ApiClient({redact_url(self.api_url)!r})"

    @property
    def store(self) -> Store:  # type: ignore[override]
        raise ConfigError(f"this client talks to the API at {redact_url(self.api_url)}; it has no store")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._session.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"cannot reach the API at {redact_url(self.api_url)}: {exc}") from None
        if response.status_code >= 400:
            _raise(response)
        return response

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        return self._request("GET", path, params=params)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def submit(self, spec: Mapping[str, Any] | str | Path, idempotency_key: str | None = None) -> ApiRunHandle:
        """Submit a run through the API (see `Client.submit`); the key travels as `Idempotency-Key`."""
        headers = {} if idempotency_key is None else {"idempotency-key": idempotency_key}
        doc = self._request("POST", "/v1/runs", json=spec_data(spec), headers=headers).json()
        return ApiRunHandle(self, str(doc["run_id"]))

    def run(self, run_id: str) -> ApiRunHandle:
        """A handle on an existing run (a unique prefix of its id works); NotFoundError when there is none."""
        return ApiRunHandle(self, str(self._get(f"/v1/runs/{run_id}").json()["run_id"]))

    def runs(self, status: str | None = None, workspace: str | None = None, limit: int = 50) -> list[RunInfo]:
        check_runs_query(status, limit)
        params = {k: v for k, v in (("status", status), ("workspace", workspace), ("limit", limit)) if v is not None}
        return [RunInfo(r["run_id"], r["workspace"], r["app"], r["status"], r["created_us"], r["finished_us"],
                        r["error_kind"]) for r in self._get("/v1/runs", params).json()]

    def approve(self, run_id: str, step: str, reason: str | None = None, actor: str | None = None) -> None:
        """Approve a waiting step; the actor recorded is this client's token (`actor` is not sent)."""
        self._request("POST", _step_path(run_id, step, "approve"), json={} if reason is None else {"reason": reason})

    def deny(self, run_id: str, step: str, reason: str, actor: str | None = None) -> None:
        """Deny a waiting step with a reason; the actor recorded is this client's token."""
        self._request("POST", _step_path(run_id, step, "deny"), json={"reason": reason})

    def pause(self, run_id: str, actor: str | None = None) -> bool:
        """Pause a run; False when it was already paused. The actor recorded is this client's token."""
        return bool(self._request("POST", f"/v1/runs/{run_id}/pause").json()["paused"])

    def resume(self, run_id: str, patch: Mapping[str, Any] | None = None, actor: str | None = None) -> list[str]:
        """Resume a paused run, with `patch` (step id -> new inputs); the ids of the patched steps."""
        body = {} if patch is None else {"patch": dict(patch)}
        return [str(s) for s in self._request("POST", f"/v1/runs/{run_id}/resume", json=body).json()["patched"]]

    def fork(self, run_id: str, from_step: str, patch: Mapping[str, Mapping[str, Any]] | None = None,
             actor: str | None = None) -> ApiRunHandle:
        """Fork `run_id` from `from_step` (see `Client.fork`); a handle on the new run."""
        body: dict[str, Any] = {"from": from_step, **({} if patch is None else {"patch": dict(patch)})}
        return ApiRunHandle(self, str(self._request("POST", f"/v1/runs/{run_id}/fork", json=body).json()["run_id"]))

    def replay(self, run_id: str, *, tolerance_tokens: int = 0, tolerance_cost_usd: float = 0.0,
               prices: PriceTable | None = None, timeout: float = 300.0) -> ReplayReport:
        """Replay `run_id` on the server (see `Client.replay`); `prices` needs the store (a local client)."""
        if prices is not None:
            raise ConfigError("prices: a replay over the API uses the server's prices; pass prices to a client "
                              "on the store URL")
        body = {"tolerance_tokens": tolerance_tokens, "tolerance_cost_usd": tolerance_cost_usd,
                "timeout_s": timeout}
        response = self._request("POST", f"/v1/runs/{run_id}/replay", json=body,
                                 timeout=httpx.Timeout(self.timeout_s, read=timeout + self.timeout_s))
        return replay_report(response.json())

    def worker(self, tools: Iterable[Any] = (), *, concurrency: int = 16, poll_interval_s: float = 0.05,
               worker_id: str | None = None) -> InProcessWorker:
        raise ConfigError(_NO_WORKER)

    def run_until_idle(self, tools: Iterable[Any] = (), *, concurrency: int = 16, poll_interval_s: float = 0.05,
                       timeout: float | None = None) -> int:
        raise ConfigError(_NO_WORKER)


def _step_path(run_id: str, step: str, action: str) -> str:
    return f"/v1/runs/{quote(run_id, safe='')}/steps/{quote(step, safe='')}/{action}"


def replay_report(doc: Mapping[str, Any]) -> ReplayReport:
    """A `ReplayReport` from its `to_dict()` JSON (the replay endpoint's answer)."""
    steps = [StepReport(s["step_id"], s["type"], s["recorded"], s["replayed"], list(s["attempts_recorded"]),
                        list(s["attempts_replayed"]), s["tokens_recorded"], s["tokens_replayed"],
                        to_micros(s["cost_recorded_usd"]), to_micros(s["cost_replayed_usd"]), s["reused"],
                        list(s["differences"])) for s in doc["steps"]]
    tol = doc["tolerance"]
    return ReplayReport(doc["run_id"], doc["status_recorded"], doc["status_replayed"], steps,
                        Tolerance(tol["tokens"], tol["cost_usd"]), list(doc["differences"]), doc["calls_answered"],
                        list(doc["calls_unrecorded"]))
