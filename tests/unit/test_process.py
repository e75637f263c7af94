"""adapters.process: the stop event of the long-running commands, and the default process id."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from fleetforge.adapters.process import loop_stop_event, process_id, stop_event


def test_stop_event_is_set_by_sigterm_and_restores_the_previous_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_event() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_event_with_only_sigterm_leaves_sigint_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_event((signal.SIGTERM,)):
        assert signal.getsignal(signal.SIGINT) is before


def test_loop_stop_event_is_set_by_sigint() -> None:
    async def go() -> bool:
        with loop_stop_event() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(stop.wait(), 5)
            return stop.is_set()

    before = signal.getsignal(signal.SIGINT)
    assert asyncio.run(go())
    assert signal.getsignal(signal.SIGINT) is before


def test_process_id_is_the_given_id_else_host_pid() -> None:
    assert process_id("w1") == "w1"
    assert process_id(None) == f"{socket.gethostname()}-{os.getpid()}"
