"""HTTP delivery of one exporter's requests: retries with backoff, Retry-After, rate-limited warnings.

Retried: connection errors, timeouts, 408, 429 and 5xx (Retry-After honoured, up to 300 s), until
delivered or stopped; the outbox keeps the events meanwhile. Not retried: 401/403 (one warning, the
exporter parks until restarted with fixed credentials) and other 4xx (the batch is dropped with a
warning). No message ever contains a credential: every text logged is scrubbed of the secrets.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

import httpx

from fleetforge.domain.secrets import redact_text, redact_url

__all__ = ["Outcome", "Request", "Sender", "Warnings", "retry_after_s"]

MAX_RETRY_AFTER_S: Final = 300.0
RETRY_STATUS: Final = frozenset({408, 425, 429})
AUTH_STATUS: Final = frozenset({401, 403})
WARN_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Request:
    """One POST: URL, body and content headers (auth headers are added by the sender)."""

    url: str
    content: bytes
    headers: Mapping[str, str]
    spans: int = 0


class Outcome(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # a 4xx other than auth: the batch is dropped
    TOO_LARGE = "too_large"  # 413: the caller may split the batch
    AUTH = "auth_failed"  # 401/403: park
    STOPPED = "stopped"  # stopped while retrying: nothing delivered


@dataclass(slots=True)
class Warnings:
    """Rate-limited, secret-scrubbed warnings: one line per topic per `every_s`, counting the rest."""

    logger: logging.Logger
    secrets: Sequence[str] = ()
    every_s: float = WARN_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _muted: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scrub(self, text: str) -> str:
        return redact_text(text, self.secrets)

    def warn(self, topic: str, message: str, *, once: bool = False) -> None:
        """Log `message` unless `topic` was logged within `every_s` (or ever, with `once`)."""
        now = self.clock()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and (once or now - last < self.every_s):
                self._muted[topic] = self._muted.get(topic, 0) + 1
                return
            self._last[topic] = now
            muted = self._muted.pop(topic, 0)
        suffix = f" ({muted} similar warnings suppressed)" if muted else ""
        self.logger.warning("%s", self.scrub(message + suffix))

    def info(self, message: str) -> None:
        self.logger.info("%s", self.scrub(message))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


class Sender:
    """POSTs requests for one exporter with its auth headers, retrying as the module says."""

    def __init__(
        self,
        name: str,
        client: httpx.Client,
        headers: Mapping[str, str],
        warnings: Warnings,
        *,
        max_backoff_s: float = 30.0,
        base_backoff_s: float = 0.5,
        abort: threading.Event | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.headers = dict(headers)
        self.warnings = warnings
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.abort = abort or threading.Event()
        self.on_retry = on_retry
        self.last_error = ""
        self.last_body = b""
        self.failing = threading.Event()  # set while a request is being retried

    def send(self, req: Request) -> Outcome:
        """Deliver `req`, retrying transient failures until delivered or `abort` is set."""
        attempt = 0
        while not self.abort.is_set():
            wait: float | None = None
            try:
                resp = self.client.post(req.url, content=req.content, headers={**req.headers, **self.headers})
            except httpx.TimeoutException:
                reason = "the request timed out"
            except httpx.ConnectError as exc:
                reason = f"cannot connect ({self.warnings.scrub(str(exc)) or type(exc).__name__})"
            except httpx.TransportError as exc:
                reason = f"transport error ({type(exc).__name__})"
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    self.last_error = ""
                    self.last_body = resp.content
                    self.failing.clear()
                    return Outcome.DELIVERED
                if status in AUTH_STATUS:
                    self.last_error = f"HTTP {status}"
                    self.warnings.warn("auth", f"trace exporter {self.name!r}: the platform refused the "
                                               f"credentials (HTTP {status}); delivery is paused until the "
                                               f"exporter restarts with valid credentials. Nothing is lost: "
                                               f"undelivered events stay in the outbox", once=True)
                    return Outcome.AUTH
                if status == 413:
                    self.last_error = "HTTP 413"
                    return Outcome.TOO_LARGE
                if status not in RETRY_STATUS and status < 500:
                    self.last_error = f"HTTP {status}"
                    what = f"a batch of {req.spans} spans (HTTP {status}); the batch is dropped" if req.spans else \
                        f"a set-up request to {redact_url(req.url)} (HTTP {status}); continuing without it"
                    self.warnings.warn(f"reject{status}", f"trace exporter {self.name!r}: the platform rejected {what}")
                    return Outcome.REJECTED
                reason = f"HTTP {status}"
                wait = retry_after_s(resp.headers.get("retry-after"))
            attempt += 1
            if wait is None:
                wait = min(self.max_backoff_s, self.base_backoff_s * 2 ** min(attempt - 1, 30))
                wait *= random.uniform(0.8, 1.2)
            self.last_error = reason
            self.failing.set()
            if self.on_retry is not None:
                self.on_retry()
            self.warnings.warn("retry", f"trace exporter {self.name!r}: delivery failed ({reason}); retrying in "
                                        f"{wait:.1f}s (attempt {attempt}). Nothing is lost: events stay in the "
                                        f"outbox")
            if self.abort.wait(wait):
                break
        return Outcome.STOPPED
