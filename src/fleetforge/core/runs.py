"""Find a run by a unique prefix of its id, and follow a run's events from the outbox as they commit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError, FleetForgeError, NotFoundError
from fleetforge.domain.models import TERMINAL_RUN
from fleetforge.domain.names import EventKind
from fleetforge.ports.store import OutboxPosition, Store

__all__ = ["END_KINDS", "MAX_CANDIDATES", "AmbiguousRunId", "RunFollower", "follow_run", "resolve_run_id"]

MAX_CANDIDATES: Final = 10
"""At most this many matching ids are named when a prefix is ambiguous."""

END_KINDS: Final = frozenset({EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED, EventKind.RUN_CANCELED})
"""The events that end a run."""


class AmbiguousRunId(FleetForgeError):
    """A prefix matches more than one run; `candidates` are the first matches in id order."""

    def __init__(self, prefix: str, candidates: list[str], more: bool) -> None:
        self.prefix, self.candidates = prefix, candidates
        listed = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(f"run id prefix {prefix!r} matches {'more than ' if more else ''}{len(candidates)} "
                         f"runs: {listed}; type more characters of the id")


def resolve_run_id(store: Store, text: str) -> str:
    """The id of the one run whose id is `text` or starts with it.

    Raises ConfigError for an empty or unprintable `text`, NotFoundError when no run matches and
    AmbiguousRunId when several do.
    """
    if not text or not text.isprintable():
        raise ConfigError(f"run id: got {text!r}, expected a run id or a unique prefix of one "
                          "(printable characters)")
    if store.get_run(text) is not None:
        return text
    found = store.find_run_ids(text, MAX_CANDIDATES + 1)
    if not found:
        raise NotFoundError(f"no run {text!r}; list runs with `fleetforge runs list` "
                            "(a prefix names the one run whose id starts with it)")
    if len(found) > 1:
        raise AmbiguousRunId(text, found[:MAX_CANDIDATES], more=len(found) > MAX_CANDIDATES)
    return found[0]


class RunFollower:
    """Reads one run's events from the outbox in commit order, a pass at a time, never waiting itself.

    `poll` returns what committed since the last pass as (outbox position, event) pairs and sets `done`
    after the event that ends the run; when that event is no longer in the outbox (retention pruned it),
    once the run is finished and every event committed before was read. Starting `after` a position
    read earlier resumes exactly after it: nothing is skipped or repeated.
    """

    def __init__(self, store: Store, run_id: str, *, after: OutboxPosition = (0, 0), batch: int = 2_000) -> None:
        self.store, self.run_id, self.position, self.batch = store, run_id, after, batch
        self.done = False

    def poll(self) -> list[tuple[OutboxPosition, Envelope]]:
        """The run's events committed since the last pass. Raises NotFoundError when the run does not exist."""
        found: list[tuple[OutboxPosition, Envelope]] = []
        while not self.done:
            rows = self.store.read_outbox(self.position, self.batch)
            for row in rows:
                self.position = row.position
                if row.run_id == self.run_id:
                    env = Envelope.from_json(row.envelope)
                    found.append((row.position, env))
                    if env.kind in END_KINDS:
                        self.done = True
                        return found
            if len(rows) == self.batch:
                continue
            run = self.store.get_run(self.run_id)
            if run is None:
                raise NotFoundError(f"no run {self.run_id!r}; list runs with `fleetforge runs list`")
            if run.status not in TERMINAL_RUN:
                return found
            # finished, its end event pruned: drain what committed before, then stop
            while rows := self.store.read_outbox(self.position, self.batch):
                self.position = rows[-1].position
                found.extend((r.position, Envelope.from_json(r.envelope)) for r in rows if r.run_id == self.run_id)
            self.done = True
        return found


def follow_run(store: Store, run_id: str, *, after: OutboxPosition = (0, 0), poll_s: float = 0.2,
               batch: int = 2_000, sleep: Callable[[float], None] = time.sleep) -> Iterator[Envelope]:
    """The run's events in commit order, read from the outbox after `after`, waiting `poll_s` between
    reads when there is nothing new; ends after the event that ends the run (see `RunFollower`).

    Raises NotFoundError when the run does not exist.
    """
    follower = RunFollower(store, run_id, after=after, batch=batch)
    while True:
        for _, env in follower.poll():
            yield env
        if follower.done:
            return
        sleep(poll_s)
