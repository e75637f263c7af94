"""What the reader loop offers readers that keep their own checkpoint: the Kafka forwarder's needs."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.readers import ReaderLoop, ReaderOptions
from fleetforge.ports.store import OutboxPosition, OutboxRecord
from tests.fixtures.kafka import envelopes


class Crash(BaseException):
    """Stands for the process dying inside `handle`."""


class Checkpointed:
    """A reader whose own checkpoint says the first `done` rows were delivered already."""

    def __init__(self, done: OutboxPosition | None = None, crash_at: int = 0, kind: str = "") -> None:
        self.name = "checkpointed"
        self.done = done
        self.crash_at = crash_at
        self.kind = kind
        self.batches: list[list[str]] = []

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        return self.done if self.done is not None and self.done > cursor else cursor

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        self.batches.append([r.event_id for r in records])
        if self.kind:
            self.kind, kind = "", self.kind
            error = RuntimeError("broker said no")
            error.error_kind = kind  # type: ignore[attr-defined]
            raise error
        if len(self.batches) == self.crash_at:
            raise Crash

    def stop(self) -> None:
        return None


class Failures:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def sent(self, consumer: str, count: int = 1) -> None: ...
    def failed(self, consumer: str, count: int = 1, error_kind: str = "") -> None:
        self.kinds.append(error_kind)
    def retried(self, consumer: str, count: int = 1) -> None: ...
    def batch(self, consumer: str, size: int, publish_seconds: float) -> None: ...
    def backlog(self, consumer: str, rows: int, oldest_created_us: int | None) -> None: ...


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    with store.transaction() as tx:
        tx.append_events(envelopes(100))
    return store


def test_a_checkpoint_ahead_of_the_cursor_becomes_the_cursor_at_once(store: SqliteStore) -> None:
    outbox = list(store.iter_outbox())
    reader = Checkpointed(done=outbox[-1].position)  # everything delivered: nothing left to hand
    ReaderLoop(store, reader, holder="a").run(threading.Event(), until_idle=True)
    assert reader.batches == []
    assert store.get_cursor("checkpointed") == outbox[-1].position


def test_a_crash_inside_handle_leaves_the_batch_and_the_cursor_alone(store: SqliteStore) -> None:
    reader = Checkpointed(crash_at=2)
    loop = ReaderLoop(store, reader, holder="a", options=ReaderOptions(batch_size=30))
    with pytest.raises(Crash):
        loop.run(threading.Event(), until_idle=True)
    assert len(reader.batches) == 2  # not handed again on the way out
    assert store.get_cursor("checkpointed") == list(store.iter_outbox())[29].position


def test_a_failure_is_named_by_its_error_kind(store: SqliteStore) -> None:
    observer = Failures()
    reader = Checkpointed(kind="_MSG_TIMED_OUT")
    options = ReaderOptions(batch_size=50, backoff_initial_s=0.001, backoff_max_s=0.01)
    ReaderLoop(store, reader, holder="a", options=options, observer=observer).run(threading.Event(), until_idle=True)
    assert observer.kinds == ["_MSG_TIMED_OUT"]
    assert reader.batches[0] == reader.batches[1]  # the same batch, handed again
