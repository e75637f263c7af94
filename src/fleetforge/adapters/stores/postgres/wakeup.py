"""Wake-ups across processes with LISTEN/NOTIFY: a transaction that queued ready steps sends a NOTIFY on
the store's channel (delivered when it commits); one listener thread per store receives them and calls
every subscribed wake function. A wake-up is a hint: workers still poll, so a lost one only costs a poll.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import sql

__all__ = ["ReadyListener", "channel_for"]

log = logging.getLogger("fleetforge.store.postgres")

_WAIT_S: Final = 0.5  # how long one wait for notifications lasts before the thread checks whether to stop
_RETRY_S: Final = 1.0  # after a lost connection


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the store in `schema` (at most 63 bytes, PostgreSQL's identifier limit)."""
    name = f"fleetforge_ready.{schema}"
    if len(name.encode()) <= 63:
        return name
    return "fleetforge_ready." + hashlib.sha256(schema.encode()).hexdigest()[:32]


class ReadyListener:
    """LISTENs on `channel` on its own connection (from `connect`) while it has subscribers, from the first
    subscription until `close` (so a process that starts one worker after another does not connect again for
    each). With none, it UNLISTENs: a busy worker finds new steps itself, and each notification would cost
    this connection's backend and this process a wake-up."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._wakes: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._changed = threading.Event()  # the subscribers changed

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` on each notification until the returned function is called."""
        with self._lock:
            self._wakes.append(wake)
            self._changed.set()
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._listen, args=(self._stop,), daemon=True,
                                                name="fleetforge-pg-listen")
                self._thread.start()

        def stop() -> None:
            with self._lock:
                if wake in self._wakes:
                    self._wakes.remove(wake)
                    self._changed.set()

        return stop

    def close(self) -> None:
        """Stop listening; waits for the thread (at most one wait) so its connection is closed on return."""
        with self._lock:
            self._wakes.clear()
            self._stop.set()
            self._changed.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2 * _WAIT_S)

    def _wake_all(self) -> None:
        with self._lock:
            wakes = list(self._wakes)
        for wake in wakes:
            try:
                wake()
            except Exception:  # a subscriber must never stop the others
                log.exception("wake-up callback failed")

    def _listen(self, stop: threading.Event) -> None:
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        unlisten = sql.SQL("UNLISTEN {}").format(sql.Identifier(self._channel))
        while not stop.is_set():
            try:
                with self._connect() as conn:
                    listening = False
                    while not stop.is_set():
                        self._changed.clear()
                        with self._lock:
                            wanted = bool(self._wakes)
                        if wanted != listening:
                            conn.execute(listen if wanted else unlisten)
                            listening = wanted
                            if listening:
                                self._wake_all()  # anything queued while not listening
                        if not listening:
                            self._changed.wait(_WAIT_S)
                        elif any(True for _ in conn.notifies(timeout=_WAIT_S)):
                            self._wake_all()
            except Exception as exc:  # the database went away: wake-ups fall back to polling meanwhile
                log.warning("LISTEN %s failed, retrying: %s", self._channel, exc)
                stop.wait(_RETRY_S)
