"""Tools for the worker kill test, loaded by `fleetforge worker --tools tests.integration.killtools:register`.

`slow_log` appends a `start` and an `end` line to the file `args["log"]` (O_APPEND, one write per
line, so lines of concurrent processes never interleave) and sleeps `args["sleep_ms"]` in between.
Each line is JSON: ev, key (the run's tag), step, attempt, pid, mono_ns (CLOCK_MONOTONIC, shared by
every process on the machine) and wall_us.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from fleetforge.adapters.executors.tools import ToolRegistry

__all__ = ["register"]


def _append(path: str, ev: str, args: dict[str, Any]) -> None:
    line = json.dumps({"ev": ev, "key": args["key"], "step": args["_step"], "attempt": args["_attempt"],
                       "pid": os.getpid(), "mono_ns": time.monotonic_ns(), "wall_us": time.time_ns() // 1000})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _slow_log(args: dict[str, Any]) -> dict[str, Any]:
    _append(args["log"], "start", args)
    time.sleep(int(args.get("sleep_ms", 300)) / 1000)
    _append(args["log"], "end", args)
    return {"ok": True, "key": args["key"], "step": args["_step"]}


def register(registry: ToolRegistry) -> None:
    """Add `slow_log`."""
    registry.register("slow_log", _slow_log, timeout_s=30.0, wants_context=True)
