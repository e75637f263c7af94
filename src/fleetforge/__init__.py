"""FleetForge: durable, observable fleets of AI-agent workflows.

``from fleetforge import Client, tool``: the Python client (adapters/client.py) and the tool decorator
(adapters/executors/pytools.py), imported on first use so ``import fleetforge`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from fleetforge.adapters.client import Client, InProcessWorker, RunHandle, RunInfo, RunResult, StepResult
    from fleetforge.adapters.executors.pytools import FunctionTool, tool
    from fleetforge.adapters.executors.tools import ToolError

__version__ = "0.1.0"

__all__ = ["Client", "FunctionTool", "InProcessWorker", "RunHandle", "RunInfo", "RunResult", "StepResult",
           "ToolError", "__version__", "tool"]

_LAZY: Final = {
    "Client": "fleetforge.adapters.client",
    "InProcessWorker": "fleetforge.adapters.client",
    "RunHandle": "fleetforge.adapters.client",
    "RunInfo": "fleetforge.adapters.client",
    "RunResult": "fleetforge.adapters.client",
    "StepResult": "fleetforge.adapters.client",
    "FunctionTool": "fleetforge.adapters.executors.pytools",
    "tool": "fleetforge.adapters.executors.pytools",
    "ToolError": "fleetforge.adapters.executors.tools",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
