"""Identifiers: run ids, W3C trace and span ids (span ids derived, so every event of an attempt agrees)."""

from __future__ import annotations

import hashlib
import secrets
import uuid

__all__ = ["attempt_span_id", "new_run_id", "new_trace_id", "run_span_id"]


def new_run_id() -> str:
    return str(uuid.uuid4())


def new_trace_id() -> str:
    """32 lowercase hex digits, never all zero."""
    return secrets.token_hex(16)


def run_span_id(run_id: str) -> str:
    """The run's root span id: 16 hex digits derived from the run id."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def attempt_span_id(run_id: str, step_id: str, attempt: int) -> str:
    """The span id of one step attempt (attempt 0 = the step before its first attempt)."""
    return hashlib.sha256(f"{run_id}\x00{step_id}\x00{attempt}".encode()).hexdigest()[:16]
