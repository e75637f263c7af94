"""The Python client on every store (SQLite file, PostgreSQL schema): idempotent submit (also from concurrent
threads), wait and results, events streamed from the outbox, cancel, runs(), and an in-process worker running
decorated sync and async tools."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fleetforge
from fleetforge import Client
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.ports.clock import SystemClock
from tests.conftest import MakeStore

SPEC_YAML = """
workspace: acme
app: py
steps:
  - {id: add, type: tool, inputs: {tool: add, args: {a: 2, b: 3}}}
  - {id: shout, type: tool, depends_on: [add], inputs: {tool: shout, args: {text: done}}}
"""

calls: list[str] = []


@fleetforge.tool
def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    calls.append("add")
    return a + b


@fleetforge.tool
async def shout(text: str) -> dict[str, str]:
    """Upper-case a text."""
    calls.append("shout")
    return {"text": text.upper()}


def spec(*steps: dict[str, Any], workspace: str = "acme") -> dict[str, Any]:
    return {"workspace": workspace, "app": "py", "steps": list(steps)}


def tool_step(step_id: str, name: str = "noop", args: dict[str, Any] | None = None,
              depends_on: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"id": step_id, "type": "tool", "depends_on": list(depends_on),
            "inputs": {"tool": name, "args": args or {}}}


@pytest.fixture
def client(make_store: MakeStore) -> Iterator[Client]:
    c = Client(store=make_store(clock=SystemClock()))
    yield c
    c.close()


def submitted_events(client: Client, run_id: str) -> list[str]:
    return [r.kind for r in client.store.iter_outbox() if r.run_id == run_id and r.kind == "run_submitted"]


def test_same_idempotency_key_gives_the_same_run_stored_once(client: Client, tmp_path: Path) -> None:
    first = client.submit(spec(tool_step("a")), idempotency_key="order-42")
    again = client.submit(SPEC_YAML, idempotency_key="order-42")  # another spec: the key decides
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC_YAML)
    other = client.submit(path, idempotency_key="order-43")
    plain = [client.submit(spec(tool_step("a"))) for _ in range(2)]
    assert again.run_id == first.run_id
    assert len({first.run_id, other.run_id, *(h.run_id for h in plain)}) == 4
    assert sorted(r.run_id for r in client.runs()) == sorted({first.run_id, other.run_id, *(h.run_id for h in plain)})
    assert submitted_events(client, first.run_id) == ["run_submitted"]
    assert [s for s in client.store.get_steps(first.run_id)] and len(client.store.get_steps(first.run_id)) == 1


def test_concurrent_submits_with_one_key_store_one_run(client: Client) -> None:
    threads, barrier = 8, threading.Barrier(8)
    ids: list[str] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            barrier.wait()
            ids.append(client.submit(spec(tool_step("a"), tool_step("b", depends_on=("a",))),
                                     idempotency_key="same-key").run_id)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=go) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert errors == [] and len(ids) == threads and len(set(ids)) == 1
    assert [r.run_id for r in client.runs()] == [ids[0]]
    assert submitted_events(client, ids[0]) == ["run_submitted"]
    assert len(client.store.get_steps(ids[0])) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, 42])
def test_a_bad_idempotency_key_is_a_clear_error_and_nothing_is_stored(client: Client, key: Any) -> None:
    with pytest.raises(SpecError, match="idempotency_key: got"):
        client.submit(spec(tool_step("a")), idempotency_key=key)
    assert client.runs() == []


def test_a_bad_spec_is_a_spec_error_and_nothing_is_stored(client: Client) -> None:
    with pytest.raises(SpecError, match="steps"):
        client.submit({"workspace": "acme", "app": "py", "steps": []}, idempotency_key="k")
    with pytest.raises(SpecError):
        client.submit("steps: [", idempotency_key="k")
    assert client.runs() == []
    assert client.submit(spec(tool_step("a")), idempotency_key="k").status() == "queued"  # the key is still free


def test_worker_runs_decorated_tools_and_wait_returns_outputs(client: Client) -> None:
    calls.clear()
    handle = client.submit(SPEC_YAML, idempotency_key="run-1")
    assert handle.status() == "queued" and not handle.result().done
    with pytest.raises(TimeoutError, match="still queued"):
        handle.wait(timeout=0.05)
    with client.worker(tools=[add, shout], concurrency=4) as worker:
        result = handle.wait(timeout=30)
    assert worker.completed == 2
    assert result.status == "succeeded" and result.done and result.error is None
    assert result.outputs is None or isinstance(result.outputs, dict)  # run outputs where the store keeps them
    assert {k: (s.status, s.attempts, s.output) for k, s in result.steps.items()} == {
        "add": ("succeeded", 1, {"result": 5}), "shout": ("succeeded", 1, {"text": "DONE"})}
    assert calls == ["add", "shout"]
    assert client.submit(SPEC_YAML, idempotency_key="run-1").run_id == handle.run_id
    assert client.run_until_idle(tools=[add]) == 0 and calls == ["add", "shout"]  # nothing ran twice


def test_a_bad_tool_call_fails_the_step_once_with_a_message_naming_the_argument(client: Client) -> None:
    handle = client.submit(spec(tool_step("bad", "add", {"a": "two"})))
    assert client.run_until_idle(tools=[add, shout], timeout=30) == 1
    result = handle.wait(timeout=5)
    assert result.status == "failed" and result.error == "validation"
    assert result.steps["bad"].attempts == 1  # not retried
    [failed] = [e for e in handle.events(timeout=5) if e.kind == "step_failed"]
    assert "argument 'a': got 'two', expected an integer" in failed.payload["error"]


def test_events_stream_in_order_as_they_commit_and_end_at_the_terminal_event(client: Client) -> None:
    handle = client.submit(SPEC_YAML)
    stream = handle.events(timeout=30)
    assert next(stream).kind == "run_submitted"  # before any worker ran: events arrive as they commit
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(e.kind for e in stream))
    reader.start()
    time.sleep(0.1)
    with client.worker(tools=[add, shout]):
        handle.wait(timeout=30)
    reader.join(30)
    assert not reader.is_alive()
    expected = [r.kind for r in client.store.iter_outbox() if r.run_id == handle.run_id]
    assert ["run_submitted", *seen] == expected and seen[-1] == "run_succeeded"
    again = [e.kind for e in handle.events(timeout=5)]  # a second read gives the whole run again
    assert again == expected
    ids = [e.id for e in client.run(handle.run_id).events(timeout=5)]
    assert len(ids) == len(set(ids)) == len(expected)


def test_events_of_a_run_among_many_and_a_timeout(client: Client) -> None:
    for _ in range(3):
        client.submit(spec(tool_step("a")))
    handle = client.submit(spec(tool_step("a")))
    with pytest.raises(TimeoutError, match="did not end within"):
        list(handle.events(timeout=0.2))
    client.run_until_idle(timeout=30)
    kinds = [e.kind for e in handle.events(timeout=5)]
    assert kinds[0] == "run_submitted" and kinds[-1] == "run_succeeded"
    assert all(e.run_id == handle.run_id for e in handle.events(timeout=5))


def test_cancel(client: Client) -> None:
    handle = client.submit(spec(tool_step("a"), tool_step("b", depends_on=("a",))))
    assert handle.cancel() is True
    assert handle.cancel() is False
    result = handle.wait(timeout=5)
    assert result.status == "canceled"
    assert [e.kind for e in handle.events(timeout=5)][-1] == "run_canceled"
    with pytest.raises(NotFoundError):
        client.run("no-such-run")
    with pytest.raises(NotFoundError):
        fleetforge.RunHandle(client, "no-such-run").cancel()


def test_runs_filters_by_status_and_workspace(client: Client) -> None:
    a = client.submit(spec(tool_step("a"), workspace="one"))
    b = client.submit(spec(tool_step("a"), workspace="two"))
    c = client.submit(spec(tool_step("a"), workspace="two"))
    c.cancel()
    assert [r.run_id for r in client.runs(workspace="two")] == [c.run_id, b.run_id]
    assert [r.run_id for r in client.runs(status="canceled")] == [c.run_id]
    assert [r.run_id for r in client.runs(status="queued", workspace="one")] == [a.run_id]
    assert len(client.runs(limit=2)) == 2
    info = client.runs(status="canceled")[0]
    assert (info.workspace, info.app, info.status, info.finished_us is not None) == ("two", "py", "canceled", True)
    with pytest.raises(ValueError, match="status: got 'done', expected one of queued, running"):
        client.runs(status="done")
    with pytest.raises(ValueError, match="limit: got 0"):
        client.runs(limit=0)


def test_retention_deletes_a_runs_key_with_the_run(client: Client) -> None:
    handle = client.submit(spec(tool_step("a")), idempotency_key="pruned")
    handle.cancel()
    store: Any = client.store
    assert store.delete_runs([handle.run_id], "run:") == 1
    again = client.submit(spec(tool_step("a")), idempotency_key="pruned")
    assert again.run_id != handle.run_id and again.status() == "queued"
