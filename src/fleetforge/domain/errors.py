"""The project's exception tree; adapters translate driver errors into these."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "FleetForgeError",
    "NotFoundError",
    "SpecError",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "disk_full_message",
]


class FleetForgeError(Exception):
    """Base of every error FleetForge raises on purpose."""


class SpecError(FleetForgeError):
    """A run spec is invalid. `problems` lists each as 'field: got VALUE, expected WHAT'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid run spec:\n  - " + "\n  - ".join(problems))


class ConfigError(FleetForgeError):
    """A setting (flag, env var, config file) is invalid; the message names it and the fix."""


class StoreError(FleetForgeError):
    """The state store failed."""


class StoreUnavailable(StoreError):
    """The state store cannot be reached."""


class StoreFull(FleetForgeError):
    """The state store's disk is full. Not a `StoreError`: retrying cannot help until an operator frees
    space, so workers stop with the message (naming the path and the fix) instead of retrying."""

    def __init__(self, path: object, detail: str) -> None:
        super().__init__(disk_full_message(path, detail))


def disk_full_message(path: object, detail: str) -> str:
    """What every store says when the disk under `path` is full: where, and what to do."""
    return f"disk full at {path}: free space or point --data-dir elsewhere ({detail})"


class NotFoundError(FleetForgeError):
    """A run or step does not exist."""


class ConflictError(FleetForgeError):
    """An operation does not fit the current state (approve a step that waits for nothing, resume a run
    that is not paused); the message says the state and what would fit."""
