"""Keep a named store lease so that one process at a time runs an outbox reader (one holder per name)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleetforge.domain.errors import FleetForgeError
from fleetforge.ports.readers import LeaseStore

__all__ = ["LeaseKeeper"]

log = logging.getLogger("fleetforge.lease")


class LeaseKeeper:
    """Acquire lease `name` for `holder` and renew it every third of `ttl_ms` from a background thread.

    `valid()` is true while the last successful renewal is recent enough that the lease cannot
    have expired (a margin of a third of the TTL); a reader checks it before each batch and
    before each commit, and stops publishing as soon as it turns false.
    """

    def __init__(self, store: LeaseStore, name: str, holder: str, ttl_ms: int,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_ms / 1000
        self._ttl_ms = ttl_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._renewed_at: float | None = None
        self.epoch: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try(self) -> bool:
        started = self._clock()
        try:
            epoch = self.store.try_lease(self.name, self.holder, self._ttl_ms)
        except FleetForgeError as exc:
            log.warning("lease %s: renewal failed (%s); retrying", self.name, exc)
            return self.valid()
        with self._lock:
            if epoch is None:
                self._renewed_at = None
            else:
                if self.epoch is not None and epoch != self.epoch:
                    log.warning("lease %s: epoch moved from %s to %s", self.name, self.epoch, epoch)
                self.epoch = epoch
                self._renewed_at = started
        return epoch is not None

    def valid(self) -> bool:
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self.ttl_s * 2 / 3

    def acquire(self, stop: threading.Event) -> bool:
        """Block until the lease is held (True) or `stop` is set (False); then keep renewing it."""
        waited = False
        while not stop.is_set():
            if self._try():
                if waited:
                    log.info("lease %s acquired by %s (epoch %s)", self.name, self.holder, self.epoch)
                self._start_renewing()
                return True
            if not waited:
                log.info("lease %s is held by another process; %s waits as standby", self.name, self.holder)
                waited = True
            stop.wait(self.ttl_s / 3)
        return False

    def try_once(self) -> bool:
        """Take or renew the lease now, without waiting; whether it is held."""
        return self._try()

    def start_renewing(self) -> None:
        """Renew the lease every third of its TTL from a background thread while it is held."""
        self._start_renewing()

    def _start_renewing(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        lost_logged = False
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                held = self._renewed_at is not None
            if not held:
                continue
            if self._try() or self.valid():
                lost_logged = False
            elif not lost_logged:
                log.warning("lease %s lost by %s", self.name, self.holder)
                lost_logged = True

    def release(self) -> None:
        """Stop renewing and hand the lease back so a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            held, self._renewed_at = self._renewed_at is not None, None
        if held:
            try:
                self.store.release_lease(self.name, self.holder)
            except FleetForgeError as exc:
                log.warning("lease %s: release failed (%s); it expires in %.0f s", self.name, exc, self.ttl_s)
