"""librdkafka's own log lines, routed through Python logging and rate-limited."""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

__all__ = ["QUIET", "RDKAFKA_LOG"]

_INTERVAL_S: Final = 30.0


class _RateLimit(logging.Filter):
    """Pass the first line of each librdkafka facility (FAIL, TXNERR, ...) per interval, count the rest."""

    def __init__(self, interval_s: float = _INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        key = f"{args[0]} {args[1]}" if len(args) > 1 else str(record.msg)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval_s) < self.interval_s:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar lines suppressed)"
        return True


RDKAFKA_LOG: Final = logging.getLogger("fleetforge.kafka.librdkafka")
"""Pass as the `logger` of every client: broker outages then log a few lines, not one per retry."""
RDKAFKA_LOG.addFilter(_RateLimit())

QUIET: Final = {"log_level": "2"}
"""For helper clients that are never polled (their log lines would queue up unserved)."""
