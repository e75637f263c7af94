"""`fleetforge doctor` results: one verdict per check, their ordering, the overall verdict and exit code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["BACKLOG_FAIL_S", "BACKLOG_WARN_S", "Check", "Verdict", "age_verdict", "exit_code", "outbox_consumers",
           "overall", "sort_checks", "store_failure"]

BACKLOG_WARN_S: Final = 60.0
"""Oldest undelivered outbox row older than this: WARN (the consumer lags or is stopped)."""
BACKLOG_FAIL_S: Final = 900.0
"""Older than this: FAIL (the consumer is down, or cannot keep up)."""


class Verdict(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"

    @property
    def rank(self) -> int:
        """Severity: FAIL > WARN > OK > SKIP."""
        return {"FAIL": 3, "WARN": 2, "OK": 1, "SKIP": 0}[self.value]


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check. `fix` says what to do (empty when OK). Never holds a secret."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "verdict": str(self.verdict), "detail": self.detail, "fix": self.fix}


def overall(checks: Iterable[Check]) -> Verdict:
    """The worst verdict (SKIP only when every check was skipped; OK for none)."""
    found = [c.verdict for c in checks]
    return max(found, key=lambda v: v.rank) if found else Verdict.OK


def exit_code(checks: Iterable[Check]) -> int:
    """1 when any check FAILed, else 0."""
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0


def sort_checks(checks: Sequence[Check], *, worst_first: bool = False) -> list[Check]:
    """Checks in their given order, or the worst first (stable within a verdict)."""
    return sorted(checks, key=lambda c: -c.verdict.rank) if worst_first else list(checks)


_NOT_SQLITE: Final = ("file is not a database", "database disk image is malformed")


def store_failure(backend: str, where: str, error: str) -> Check:
    """The FAIL check of a state store that cannot be used, with the fix that fits the backend and error."""
    if backend == "sqlite" and any(sign in error for sign in _NOT_SQLITE):
        return Check("state store", Verdict.FAIL,
                     f"{where} is not a valid SQLite database (corrupt, or another kind of file): {error}",
                     f"move {where} aside (keep it if you need to recover data), then run `fleetforge migrate` "
                     "with the same --data-dir / --store to create an empty store, or point them at the right file")
    if backend == "sqlite":
        return Check("state store", Verdict.FAIL, f"sqlite store {where} unusable: {error}",
                     f"check that {where} and its folder are readable and writable by this user, and that "
                     "the disk is not full")
    return Check("state store", Verdict.FAIL, f"{backend} store {where} unreachable: {error}",
                 "start the database or fix --store / FLEETFORGE_STORE_URL (host, port, database, user)")


def age_verdict(age_s: float | None, *, warn_s: float = BACKLOG_WARN_S, fail_s: float = BACKLOG_FAIL_S) -> Verdict:
    """The verdict for the age of a consumer's oldest undelivered row (None: nothing pending)."""
    if age_s is None or age_s < warn_s:
        return Verdict.OK
    return Verdict.WARN if age_s < fail_s else Verdict.FAIL


def outbox_consumers(bus_configured: bool, exporters: Sequence[str]) -> list[str]:
    """Outbox cursor names that a deployment with this configuration reads from (the first is the one
    feeding ClickHouse)."""
    names = ["kafka-forwarder"] if bus_configured else ["clickhouse-sink"]
    return names + [f"exporter-{n}" for n in exporters]
