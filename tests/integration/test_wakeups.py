"""Wake-ups when steps are queued (`Tx.notify_ready` → `Store.on_ready`), on SQLite and PostgreSQL: a commit
wakes the subscribers, a rollback does not; on PostgreSQL (LISTEN/NOTIFY) another store instance, as a
worker in another process would be, is woken too, and a process LISTENs only while someone asks. A worker
asks only while idle: busy, it finds new steps at its poll ticks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.postgres.wakeup import channel_for
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.runtime import Runtime
from fleetforge.domain.models import StepType
from fleetforge.ports.clock import SystemClock
from fleetforge.ports.store import Store
from tests.conftest import PG_DSN, MakeStore
from tests.fakes import Hang, ScriptedExecutor, tool
from tests.support import until


def _notify(store: Store, *, commit: bool) -> None:
    try:
        with store.transaction() as tx:
            tx.notify_ready()
            if not commit:
                raise RuntimeError("roll back")
    except RuntimeError:
        pass


def test_a_commit_wakes_subscribers_and_a_rollback_does_not(store: Store) -> None:
    woken = threading.Event()
    stop = store.on_ready(woken.set)
    try:
        if store.backend == "postgres":  # it wakes once when it starts listening (anything queued before)
            assert woken.wait(5.0)
        woken.clear()
        _notify(store, commit=False)
        assert not woken.wait(1.0)
        _notify(store, commit=True)
        assert woken.wait(5.0)
    finally:
        stop()
    woken.clear()
    _notify(store, commit=True)  # stopped: no longer called
    assert not woken.wait(1.0)


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_postgres_wakes_a_worker_of_another_store_instance(make_store: MakeStore) -> None:
    """LISTEN/NOTIFY is PostgreSQL's."""
    listener, sender = make_store(), make_store()
    listener.migrate()
    assert isinstance(listener, PostgresStore) and isinstance(sender, PostgresStore)
    woken = threading.Event()
    listening = threading.Event()

    def wake() -> None:
        woken.set()
        listening.set()

    stop = listener.on_ready(wake)
    try:
        assert listening.wait(5.0)  # the LISTEN connection is up
        woken.clear()
        _notify(sender, commit=True)
        assert woken.wait(5.0)
    finally:
        stop()


def _listener_statement(store: PostgresStore) -> str:
    """The last LISTEN or UNLISTEN the store's listening connection sent, as PostgreSQL reports it."""
    channel = channel_for(store.schema)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        row = conn.execute("SELECT query FROM pg_stat_activity WHERE query IN (%s, %s)",
                           (f'LISTEN "{channel}"', f'UNLISTEN "{channel}"')).fetchone()
    return "" if row is None else str(row[0]).split()[0]


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_postgres_listens_only_while_someone_asks(make_store: MakeStore) -> None:
    listener, sender = make_store(), make_store()
    listener.migrate()
    assert isinstance(listener, PostgresStore)
    woken = threading.Event()
    stop = listener.on_ready(woken.set)
    assert woken.wait(5.0)  # listening
    assert _listener_statement(listener) == "LISTEN"
    stop()
    until(lambda: _listener_statement(listener) == "UNLISTEN", timeout=10)
    woken.clear()
    _notify(sender, commit=True)
    assert not woken.wait(1.0)  # nobody asks: nobody is woken
    stop = listener.on_ready(woken.set)
    try:
        assert woken.wait(5.0)  # listening again, and told that something may have been queued meanwhile
        assert _listener_statement(listener) == "LISTEN"
        woken.clear()
        _notify(sender, commit=True)
        assert woken.wait(5.0)
    finally:
        stop()


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_worker_asks_for_wake_ups_only_while_idle(make_store: MakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(clock=SystemClock())
    store.migrate()
    asking: list[Callable[[], None]] = []
    asked = 0
    real = store.on_ready

    def on_ready(wake: Callable[[], None]) -> Callable[[], None]:
        nonlocal asked
        asked += 1
        asking.append(wake)
        stop = real(wake)

        def unsubscribe() -> None:
            asking.remove(wake)
            stop()

        return unsubscribe

    monkeypatch.setattr(store, "on_ready", on_ready)
    ex = ScriptedExecutor()
    rt = Runtime(store, executors={t: ex for t in StepType}, packs=default_packs(), clock=SystemClock())

    async def idle_then_busy() -> None:
        release = asyncio.Event()
        ex.add("slow", Hang(release=release))
        stop = asyncio.Event()
        worker = rt.worker("w1", concurrency=4, poll_interval_s=30.0)
        running = asyncio.create_task(worker.run(stop=stop))
        await _until(lambda: len(asking) == 1)  # idle: it asks
        rt.submit({"steps": [tool("slow")]})
        await _until(lambda: worker.inflight == 1)  # woken: its next poll tick was 30 s away
        await _until(lambda: not asking)  # busy: it no longer asks
        release.set()
        await _until(lambda: len(asking) == 1)  # idle again
        stop.set()
        await running

    async def busy_worker_polls() -> None:
        nonlocal asked
        release = asyncio.Event()
        ex.add("slow2", Hang(release=release))
        stop = asyncio.Event()
        worker = rt.worker("w2", concurrency=4, poll_interval_s=0.2)
        running = asyncio.create_task(worker.run(stop=stop))
        rt.submit({"steps": [tool("slow2")]})
        await _until(lambda: worker.inflight == 1 and not asking)
        asked = 0
        fast = rt.submit({"steps": [tool("fast")]})
        await _until(lambda: store.get_run(fast) is not None and store.get_run(fast).status.value == "succeeded")
        assert asked == 0 and worker.inflight == 1  # found at a poll tick, while still busy
        release.set()
        stop.set()
        await running

    asyncio.run(idle_then_busy())
    asyncio.run(busy_worker_polls())
