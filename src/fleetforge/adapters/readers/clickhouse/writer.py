"""The envelope writer: de-duplicates a batch by event id, then inserts what is new in one go.

Materialized views count every inserted row, and a retried insert's de-duplication token protects
only the raw table, not the views. So the writer removes, before inserting, every event whose id
repeats inside the batch or is already recorded in `telemetry.event_ids` (every stored or rejected
event is recorded there by the same insert). A batch delivered twice, or retried after a crash
between the insert and the source's commit, therefore changes no derived number.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fleetforge.ports.analytics import AnalyticsStore, SourceEvent

__all__ = ["EnvelopeWriter", "WriteResult"]

log = logging.getLogger("fleetforge.analytics.writer")



@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int  # events handed to the ingestion pipeline (stored or rejected there)
    duplicates: int  # events skipped because their id was in the batch already or stored before


class EnvelopeWriter:
    """Writes source events to the analytics store exactly once per event id."""

    def __init__(self, store: AnalyticsStore) -> None:
        self.store = store

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` already recorded in telemetry.event_ids."""
        return self.store.known_ids(ids)

    def write(self, events: Sequence[SourceEvent]) -> WriteResult:
        """Insert the events not stored yet; raises AnalyticsError (nothing to commit) on failure."""
        unique: dict[str, str | bytes] = {}
        for ev in events:
            unique.setdefault(ev.event_id, ev.envelope)
        known = self.existing(list(unique)) if unique else set()
        fresh = [(i, env) for i, env in unique.items() if i not in known]
        if fresh:
            self.store.insert_envelopes(fresh)
        skipped = len(events) - len(fresh)
        if skipped:
            log.debug("skipped %d duplicate events of %d", skipped, len(events))
        return WriteResult(len(fresh), skipped)
