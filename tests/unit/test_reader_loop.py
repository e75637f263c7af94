"""The one reader loop: lease, commit-after-handle cursors, retry of the same batch, takeover."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.readers import ReaderLoop, ReaderOptions
from fleetforge.ports.store import OutboxPosition, OutboxRecord
from tests.integration.clickhouse_fleet import open_store, run_fleet


class Collect:
    """Records every event id it handles; fails the first `fail` batches."""

    def __init__(self, name: str = "collect", fail: int = 0) -> None:
        self.name = name
        self.fail = fail
        self.seen: list[str] = []
        self.starts: list[OutboxPosition] = []
        self.stops = 0

    def start(self, cursor: OutboxPosition) -> OutboxPosition:
        self.starts.append(cursor)
        return cursor

    def handle(self, records: Sequence[OutboxRecord]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("delivery failed")
        self.seen.extend(r.event_id for r in records)

    def stop(self) -> None:
        self.stops += 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("readers") / "state.db"
    store = open_store(path)
    run_fleet(store, runs=12, seed=3)
    store.close()
    return path


def _ids(store: SqliteStore) -> list[str]:
    return [r.event_id for r in store.iter_outbox()]


def test_every_event_once_in_commit_order_and_the_cursor_follows(fleet: Path) -> None:
    store = SqliteStore(fleet)
    reader = Collect("in-order")
    loop = ReaderLoop(store, reader, holder="a", options=ReaderOptions(batch_size=50))
    loop.run(threading.Event(), until_idle=True)
    assert reader.seen == _ids(store)
    assert store.outbox_backlog("in-order")[0] == 0
    assert loop.stats.sent == len(reader.seen) and loop.stats.batches >= len(reader.seen) // 50


def test_a_failed_batch_is_retried_whole_and_never_skipped(fleet: Path) -> None:
    store = SqliteStore(fleet)
    reader = Collect("flaky", fail=3)
    loop = ReaderLoop(store, reader, holder="a",
                      options=ReaderOptions(batch_size=40, backoff_initial_s=0.001, backoff_max_s=0.01))
    loop.run(threading.Event(), until_idle=True)
    assert reader.seen == _ids(store)
    assert loop.stats.retried == 3 and loop.stats.failed == 3 * 40


def test_one_holder_per_reader_name_and_a_standby_takes_over(fleet: Path) -> None:
    store = SqliteStore(fleet)
    first, second = Collect("shared"), Collect("shared")
    options = ReaderOptions(batch_size=25, lease_ttl_ms=300)
    a = ReaderLoop(store, first, holder="a", options=options)
    b = ReaderLoop(SqliteStore(fleet), second, holder="b", options=options)
    assert a.step() == 25
    assert b.step() == 0 and not b.holding  # standby while a holds the lease
    a._drop()  # a dies without releasing: its lease expires
    threading.Event().wait(0.35)
    b.run(threading.Event(), until_idle=True)
    assert first.seen + second.seen == _ids(store)  # nothing lost, nothing twice
    assert second.starts[0] != (0, 0)  # b started from the cursor a committed
