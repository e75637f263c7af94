"""Tools for the agent kill test, loaded by `fleetforge worker --tools tests.integration.agentkilltools:register`.

`tally` appends one JSON line (step, attempt, pid) to the file named by AGENT_KILL_LOG when it finishes
(O_APPEND, one write), after sleeping AGENT_KILL_SLEEP_MS: a side-effect counter of its executions.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from fleetforge.adapters.executors.tools import ToolRegistry

__all__ = ["register"]


def _tally(args: dict[str, Any]) -> dict[str, Any]:
    time.sleep(int(os.environ.get("AGENT_KILL_SLEEP_MS", "30")) / 1000)
    line = json.dumps({"seed": args["_seed"], "step": args["_step"], "attempt": args["_attempt"], "pid": os.getpid(),
                       "note": args.get("note")})
    fd = os.open(os.environ["AGENT_KILL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return {"counted": True, "note": args.get("note")}


def register(registry: ToolRegistry) -> None:
    """Add `tally`."""
    registry.register("tally", _tally, timeout_s=30.0, wants_context=True, description="Count a call.",
                      parameters={"type": "object", "properties": {"note": {"type": "string"}}})
