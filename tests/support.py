"""Test helpers shared by every suite."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

__all__ = ["IN_CI", "need", "until"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(available: bool, what: str) -> None:
    """Skip when a real service or tool is missing locally; fail under CI=true, where it must exist."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")


def until(check: Callable[[], object], timeout: float = 30.0) -> None:
    """Wait until `check()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
