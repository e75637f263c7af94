"""Simulated event times for the demo: each run placed at a deterministic offset in a past window.

Only the `occurred_us` of the events a run writes moves, by one constant per run, so everything
within a run keeps its order and its real durations and latencies. State rows (runs, steps, the
ledger), the outbox's `created_us` (retention and lag), leases and every scheduling decision keep
the wall clock.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fleetforge.domain.envelope import Envelope
from fleetforge.ports.store import Store, Tx

__all__ = ["SimulatedWindow", "window_offsets"]


def window_offsets(runs: int, seed: int, window_us: int) -> list[int]:
    """Each run's start in the window, in microseconds from its beginning: ascending with the run's
    index, uneven like real arrivals, the same for the same seed."""
    rng = random.Random(f"fleetforge-demo-window:{seed}")
    return sorted(int(rng.random() * window_us) for _ in range(runs))


class SimulatedWindow:
    """Places runs in the window `[end_us - window_us, end_us)`; wraps a store so that the events of a
    placed run are written with their time moved by the run's shift."""

    def __init__(self, runs: int, seed: int, window_us: int, end_us: int) -> None:
        self.starts = [end_us - window_us + o for o in window_offsets(runs, seed, window_us)]
        self._shift: dict[str, int] = {}

    def place(self, run_id: str, index: int, submitted_us: int) -> None:
        """Run `run_id`, the `index`-th of the fleet submitted at about `submitted_us`, starts at its
        place in the window."""
        self._shift[run_id] = self.starts[index] - submitted_us

    def shift(self, events: Sequence[Envelope]) -> list[Envelope]:
        """The events with the times of placed runs moved; others unchanged."""
        return [dataclasses.replace(e, occurred_us=e.occurred_us + d) if (d := self._shift.get(e.run_id)) else e
                for e in events]

    def store(self, store: Store) -> Store:
        """`store`, but its transactions write the events of placed runs at their simulated times."""
        return _ShiftedStore(store, self)


class _ShiftedTx:
    """A transaction whose `append_events` moves event times; every other call goes to `tx`."""

    def __init__(self, tx: Tx, window: SimulatedWindow) -> None:
        self._tx, self._window = tx, window

    def append_events(self, events: Sequence[Envelope]) -> None:
        self._tx.append_events(self._window.shift(events))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


class _ShiftedStore:
    """`store` with shifted transactions; every other call goes to `store`."""

    def __init__(self, store: Store, window: SimulatedWindow) -> None:
        self._store, self._window = store, window

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._store.transaction() as tx:
            yield _ShiftedTx(tx, self._window)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
