"""A small PostgreSQL connection pool: at most `size` connections, one checked out per transaction or query."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from fleetforge.domain.errors import StoreUnavailable

__all__ = ["Pool"]

Conn = psycopg.Connection[tuple[Any, ...]]


class Pool:
    """At most `size` connections; one is checked out per transaction or query."""

    def __init__(self, connect: Callable[[], Conn], size: int, timeout_s: float) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._timeout_s = timeout_s
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        if not self._slots.acquire(timeout=self._timeout_s):
            raise StoreUnavailable(f"no free PostgreSQL connection after {self._timeout_s:g}s")
        conn: Conn | None = None
        try:
            with self._lock:
                while self._idle and conn is None:
                    conn = self._idle.pop()
                    if conn.closed or conn.broken:
                        conn = None
            if conn is None:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _give_back(self, conn: Conn) -> None:
        if not conn.closed and not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()
        with self._lock:
            if self._closed or conn.closed or conn.broken:
                conn.close()
            else:
                self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
