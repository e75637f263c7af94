"""The project's exception tree; adapters translate driver errors into these."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FleetForgeError",
    "NotFoundError",
    "SpecError",
    "StoreError",
    "StoreUnavailable",
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


class NotFoundError(FleetForgeError):
    """A run or step does not exist."""
