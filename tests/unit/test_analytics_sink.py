"""Sink batching, commit-after-insert and retry, with an in-memory source and writer (no services)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from fleetforge.adapters.readers.clickhouse.sink import Sink, SinkConfig
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter, WriteResult
from fleetforge.ports.analytics import AnalyticsUnavailable, SourceEvent


class ListSource:
    name = "list"

    def __init__(self, n: int) -> None:
        self.events = [SourceEvent(f"e{i}", "{}", i) for i in range(n)]
        self.pos = 0
        self.committed = -1

    def poll(self, max_events: int, timeout_s: float) -> list[SourceEvent]:
        got = self.events[self.pos:self.pos + max_events]
        self.pos += len(got)
        return got

    def commit(self, events: Sequence[SourceEvent]) -> None:
        self.committed = events[-1].ack

    def close(self) -> None:
        pass


class MemoryWriter(EnvelopeWriter):
    def __init__(self) -> None:
        self.stored: dict[str, int] = {}
        self.down = False
        self.batches: list[int] = []

    def write(self, events: Sequence[SourceEvent]) -> WriteResult:
        if self.down:
            raise AnalyticsUnavailable("down")
        fresh = [e for e in dict.fromkeys(e.event_id for e in events) if e not in self.stored]
        for e in fresh:
            self.stored[e] = 1
        self.batches.append(len(events))
        return WriteResult(len(fresh), len(events) - len(fresh))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_flushes_by_size_and_commits_after_each_insert() -> None:
    source, writer = ListSource(25), MemoryWriter()
    sink = Sink(source, writer, SinkConfig(batch_size=10))
    assert sink.drain() == 25
    assert writer.batches == [10, 10, 5] and source.committed == 24


def test_flushes_by_time() -> None:
    source, writer, clock = ListSource(3), MemoryWriter(), Clock()
    sink = Sink(source, writer, SinkConfig(batch_size=100, flush_interval_s=1.0), clock=clock)
    sink.poll_once()
    assert not sink.due()
    clock.t = 1.5
    assert sink.due()
    assert sink.flush() == 3 and source.committed == 2


def test_a_failed_write_keeps_the_batch_and_commits_nothing() -> None:
    source, writer = ListSource(5), MemoryWriter()
    sink = Sink(source, writer, SinkConfig(batch_size=10))
    sink.poll_once()
    writer.down = True
    with pytest.raises(AnalyticsUnavailable):
        sink.flush()
    assert source.committed == -1 and sink.pending == 5 and sink.stats.failures == 1
    writer.down = False
    assert sink.flush() == 5 and source.committed == 4 and sink.pending == 0


def test_run_retries_until_the_store_returns_then_drains_on_stop() -> None:
    source, writer = ListSource(40), MemoryWriter()
    writer.down = True
    sink = Sink(source, writer, SinkConfig(batch_size=16, flush_interval_s=0.0, retry_initial_s=0.01,
                                           retry_max_s=0.02))
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,))
    thread.start()
    while sink.stats.failures < 3:
        threading.Event().wait(0.01)
    writer.down = False
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(writer.stored) == 40 and source.committed == 39


def test_stop_gives_up_after_the_drain_timeout_while_down() -> None:
    source, writer = ListSource(5), MemoryWriter()
    writer.down = True
    sink = Sink(source, writer, SinkConfig(retry_initial_s=0.01, retry_max_s=0.01))
    stop = threading.Event()
    stop.set()
    sink.run(stop, drain_timeout_s=0.1)
    assert source.committed == -1 and sink.pending == 5
