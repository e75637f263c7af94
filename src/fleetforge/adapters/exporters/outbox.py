"""Outbox pages read and parsed once for all the exporters of a process.

Every exporter keeps its own cursor, but exporters that are in step ask for the same pages; a small
cache keyed by (after, limit) lets the first reader pay for the query and the JSON parsing. A full
page never changes (the outbox is append-only and gap-safe), so it is kept until evicted; a short page
(the end of the outbox) is reused only briefly, and readers poll at aligned instants so that they
meet there.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from fleetforge.core.exporting import SKIPPED_KINDS
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.store import OutboxPosition, Store

__all__ = ["OutboxPages", "Page"]

SHORT_PAGE_TTL_S: Final = 0.15


@dataclass(frozen=True, slots=True)
class Page:
    """Parsed rows after a position: (position, envelope or None when unreadable or of no interest)."""

    rows: tuple[tuple[OutboxPosition, Envelope | None], ...]
    full: bool
    read_at: float
    bad: int = 0


class OutboxPages:
    """A bounded LRU of parsed outbox pages over one store, safe to share between threads."""

    def __init__(self, store: Store, *, pages: int = 16) -> None:
        self.store = store
        self.max_pages = pages
        self._pages: OrderedDict[tuple[OutboxPosition, int], Page] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def read(self, after: OutboxPosition, limit: int) -> Page:
        """The page of at most `limit` rows after `after` (raises the store's errors)."""
        key = (after, limit)
        now = time.monotonic()
        with self._lock:
            page = self._pages.get(key)
            if page is not None and (page.full or now - page.read_at < SHORT_PAGE_TTL_S):
                self._pages.move_to_end(key)
                self.hits += 1
                return page
        records = self.store.read_outbox(after, limit)
        rows: list[tuple[OutboxPosition, Envelope | None]] = []
        bad = 0
        for rec in records:
            env: Envelope | None = None
            if rec.kind not in SKIPPED_KINDS:
                try:
                    env = Envelope.from_json(rec.envelope)
                except (ValueError, KeyError, TypeError):
                    bad += 1
            rows.append((rec.position, env))
        page = Page(tuple(rows), len(records) >= limit, now, bad)
        with self._lock:
            self.misses += 1
            self._pages[key] = page
            while len(self._pages) > self.max_pages:
                self._pages.popitem(last=False)
        return page


def aligned_wait(interval_s: float) -> float:
    """Seconds until the next multiple of `interval_s` on the monotonic clock (readers meet there)."""
    return interval_s - (time.monotonic() % interval_s) if interval_s > 0 else 0.0
