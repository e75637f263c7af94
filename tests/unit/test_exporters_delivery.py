"""Delivery rules: what is retried and how long to wait, what parks or drops, and scrubbed warnings."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from fleetforge.adapters.readers.traces.delivery import Outcome, Request, Sender, Warnings, retry_after_s

SECRET = "sk-lf-very-secret-9876"
REQ = Request("https://platform.example/v1/traces", b"body", {"Content-Type": "application/x-protobuf"}, 3)


class Waits(threading.Event):
    """An abort event that records each backoff instead of sleeping."""

    def __init__(self, stop_after: int = 1000) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if len(self.waits) >= self.stop_after:
            self.set()
        return self.is_set()


def sender(answers: list[httpx.Response | Exception], caplog: pytest.LogCaptureFixture,
           abort: Waits | None = None) -> tuple[Sender, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = httpx.Client(transport=httpx.MockTransport(handle))
    warnings = Warnings(logging.getLogger("fleetforge.exporters"), secrets=(SECRET,))
    return Sender("langfuse", client, {"Authorization": f"Basic {SECRET}"}, warnings, abort=abort or Waits()), seen


def test_delivered_with_auth_headers(caplog: pytest.LogCaptureFixture) -> None:
    s, seen = sender([httpx.Response(200)], caplog)
    assert s.send(REQ) is Outcome.DELIVERED
    assert seen[0].headers["authorization"] == f"Basic {SECRET}"
    assert seen[0].headers["content-type"] == "application/x-protobuf" and seen[0].content == b"body"


@pytest.mark.parametrize("failure", [
    httpx.Response(500), httpx.Response(502), httpx.Response(503), httpx.Response(504), httpx.Response(408),
    httpx.ConnectError("[Errno 111] Connection refused"), httpx.ReadTimeout("timed out"),
])
def test_transient_failures_are_retried_with_growing_backoff(failure: httpx.Response | Exception,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    abort = Waits()
    s, seen = sender([failure, failure, failure, httpx.Response(202)], caplog, abort)
    assert s.send(REQ) is Outcome.DELIVERED
    assert len(seen) == 4 and len(abort.waits) == 3
    assert abort.waits[0] < abort.waits[1] < abort.waits[2] <= 30 * 1.2


def test_retry_after_is_honoured_on_429_and_503(caplog: pytest.LogCaptureFixture) -> None:
    abort = Waits()
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    s, _ = sender([httpx.Response(429, headers={"Retry-After": "7"}),
                   httpx.Response(503, headers={"Retry-After": when}), httpx.Response(200)], caplog, abort)
    assert s.send(REQ) is Outcome.DELIVERED
    assert abort.waits[0] == 7.0 and 35 < abort.waits[1] <= 40


def test_backoff_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    abort = Waits(stop_after=12)
    s, _ = sender([httpx.Response(500)], caplog, abort)
    assert s.send(REQ) is Outcome.STOPPED
    assert max(abort.waits) <= 30 * 1.2 and len(abort.waits) == 12


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried_and_warned_once(status: int, caplog: pytest.LogCaptureFixture) -> None:
    s, seen = sender([httpx.Response(status)], caplog)
    with caplog.at_level(logging.WARNING, logger="fleetforge.exporters"):
        assert [s.send(REQ) for _ in range(3)] == [Outcome.AUTH] * 3
    assert len(seen) == 3
    assert len(caplog.records) == 1 and f"HTTP {status}" in caplog.text and "paused" in caplog.text


def test_other_4xx_drop_the_batch_and_413_asks_to_split(caplog: pytest.LogCaptureFixture) -> None:
    s, _ = sender([httpx.Response(400)], caplog)
    assert s.send(REQ) is Outcome.REJECTED
    s, _ = sender([httpx.Response(413)], caplog)
    assert s.send(REQ) is Outcome.TOO_LARGE


def test_stop_while_retrying(caplog: pytest.LogCaptureFixture) -> None:
    abort = Waits()
    abort.set()
    s, seen = sender([httpx.Response(500)], caplog, abort)
    assert s.send(REQ) is Outcome.STOPPED and seen == []


def test_warnings_are_rate_limited_and_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    w = Warnings(logging.getLogger("fleetforge.exporters"), secrets=(SECRET, "abc"), every_s=60,
                 clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="fleetforge.exporters"):
        for i in range(10):
            now[0] = i
            w.warn("retry", f"failed with key {SECRET}")
        now[0] = 61
        w.warn("retry", "failed again")
        w.warn("other", "abc is short: kept")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "failed with key ***"
    assert lines[1] == "failed again (9 similar warnings suppressed)"
    assert lines[2] == "abc is short: kept"
    assert SECRET not in caplog.text


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("99999", 300.0), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    assert retry_after_s(value) == expected
