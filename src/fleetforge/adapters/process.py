"""Process concerns of the long-running commands: stopping on SIGINT/SIGTERM, and this process's id."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from fleetforge.core.readers import host_pid

__all__ = ["STOP_SIGNALS", "loop_stop_event", "process_id", "stop_event"]

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def process_id(given: str | None = None) -> str:
    """`given` when set, else `host-pid` (the default worker id and lease holder of a command)."""
    return given or host_pid()


@contextmanager
def stop_event(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[threading.Event]:
    """An event set by any of `signals` (main thread only); the previous handlers come back on exit."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def loop_stop_event() -> Iterator[asyncio.Event]:
    """The running event loop's version of `stop_event`: an asyncio.Event set by SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
