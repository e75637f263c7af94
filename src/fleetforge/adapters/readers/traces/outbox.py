"""Outbox pages read and parsed once for all the exporters of a process.

Every exporter runs its own reader loop with its own cursor, but exporters that are in step ask for the
same pages; `OutboxPages` stands in for the store in their loops (`ReaderStore`) and keeps a small cache
keyed by (after, limit), so the first reader pays for the query, and a cache of parsed envelopes keyed by
position, so it also pays for the JSON parsing. A full page never changes (the outbox is append-only and
gap-safe), so it is kept until evicted; a short page (the end of the outbox) is reused only briefly.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Final

from fleetforge.core.exporting import SKIPPED_KINDS
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.store import OutboxPosition, OutboxRecord, Store

__all__ = ["OutboxPages"]

SHORT_PAGE_TTL_S: Final = 0.15


class OutboxPages:
    """A `ReaderStore` over `store` with a bounded LRU of outbox pages and parsed envelopes; thread-safe."""

    def __init__(self, store: Store, *, pages: int = 16, envelopes: int = 20_000) -> None:
        self.store = store
        self.backend = store.backend
        self.max_pages = pages
        self.max_envelopes = envelopes
        self._pages: OrderedDict[tuple[OutboxPosition, int], tuple[list[OutboxRecord], float]] = OrderedDict()
        self._envs: OrderedDict[OutboxPosition, Envelope | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.bad = 0

    # -- ReaderStore ---------------------------------------------------------------------------

    def read_outbox(self, after: OutboxPosition, limit: int) -> list[OutboxRecord]:
        """The page of at most `limit` rows after `after` (raises the store's errors)."""
        key = (after, limit)
        now = time.monotonic()
        with self._lock:
            cached = self._pages.get(key)
            if cached is not None and (len(cached[0]) >= limit or now - cached[1] < SHORT_PAGE_TTL_S):
                self._pages.move_to_end(key)
                self.hits += 1
                return cached[0]
        records = self.store.read_outbox(after, limit)
        with self._lock:
            self.misses += 1
            self._pages[key] = (records, now)
            while len(self._pages) > self.max_pages:
                self._pages.popitem(last=False)
        return records

    def get_cursor(self, consumer: str) -> OutboxPosition:
        return self.store.get_cursor(consumer)

    def set_cursor(self, consumer: str, position: OutboxPosition) -> None:
        self.store.set_cursor(consumer, position)

    def outbox_backlog(self, consumer: str) -> tuple[int, int | None]:
        return self.store.outbox_backlog(consumer)

    def try_lease(self, name: str, holder: str, ttl_ms: int) -> int | None:
        return self.store.try_lease(name, holder, ttl_ms)

    def release_lease(self, name: str, holder: str) -> None:
        self.store.release_lease(name, holder)

    # -- parsing -------------------------------------------------------------------------------

    def envelope(self, record: OutboxRecord) -> Envelope | None:
        """The parsed envelope of `record`; None when of no interest to traces or unreadable (counted in `bad`)."""
        if record.kind in SKIPPED_KINDS:
            return None
        with self._lock:
            if record.position in self._envs:
                return self._envs[record.position]
        env: Envelope | None = None
        try:
            env = Envelope.from_json(record.envelope)
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.bad += 1
        with self._lock:
            self._envs[record.position] = env
            while len(self._envs) > self.max_envelopes:
                self._envs.popitem(last=False)
        return env
