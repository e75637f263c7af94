"""Wake-ups when steps are queued (`Tx.notify_ready` → `Store.on_ready`), on SQLite and PostgreSQL: a commit
wakes the subscribers, a rollback does not; on PostgreSQL (LISTEN/NOTIFY) another store instance, as a
worker in another process would be, is woken too."""

from __future__ import annotations

import threading

import pytest

from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.ports.store import Store
from tests.conftest import MakeStore


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
