"""Control of an embedded stack from another process: its state file (pid, addresses), starting it in the
background and waiting until it answers, stopping it by SIGTERM within a deadline, probing it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fleetforge.adapters.devstack.stack import STATE_FILE, read_state
from fleetforge.domain.errors import FleetForgeError

__all__ = ["LOG_FILE", "Detached", "StackError", "alive", "ping", "running_state", "start_detached", "stop_running"]

LOG_FILE: Final = "observability.log"


class StackError(FleetForgeError):
    """The embedded stack did not start or stop; the message says what to look at."""


@dataclass(frozen=True, slots=True)
class Detached:
    """A stack started in the background and answering."""

    pid: int
    log_path: Path
    state: dict[str, Any]


def alive(pid: int) -> bool:
    """Whether process `pid` exists (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_state(folder: Path) -> dict[str, Any] | None:
    """The state of a live embedded stack under `folder`; a stale state file is removed."""
    state = read_state(folder)
    if state is None:
        return None
    if alive(int(state.get("pid", 0))):
        return state
    (folder / STATE_FILE).unlink(missing_ok=True)
    return None


def ping(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the ClickHouse endpoint answers /ping (which needs no credentials, as ClickHouse's)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_detached(argv: Sequence[str], folder: Path, wait_s: float) -> Detached:
    """Run `python -m fleetforge ARGV` in a new session, logging to `folder`, until its stack answers;
    StackError when it exits first or does not answer within `wait_s` (then it is terminated)."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / LOG_FILE
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "fleetforge", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise StackError("the embedded stack exited while starting:\n" + "\n".join(tail))
        state = read_state(folder)
        if state and state.get("pid") == child.pid and ping(state["addresses"]["clickhouse_http"]):
            return Detached(child.pid, log_path, state)
        time.sleep(0.2)
    child.terminate()
    raise StackError(f"the embedded stack did not answer within {wait_s:.0f}s; see {log_path}")


def stop_running(folder: Path, state: dict[str, Any], timeout_s: float) -> int:
    """SIGTERM the stack of `state` and wait until it is gone, then remove its state file; its pid.
    StackError when it still runs after `timeout_s`."""
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        raise StackError(
            f"the embedded stack (pid {pid}) did not stop within {timeout_s:.0f}s; it is draining or "
            f"stuck: see {folder / LOG_FILE}, or end it with `kill -9 {pid}`"
        )
    (folder / STATE_FILE).unlink(missing_ok=True)
    return pid
