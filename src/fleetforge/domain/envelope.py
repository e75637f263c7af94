"""The event envelope (schema_version 1), identical in the outbox, Kafka, ClickHouse and exporters."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetforge.domain.jsontext import compact, compact_plain, plain
from fleetforge.domain.names import CATALOG, SCHEMA_VERSION, EventKind

__all__ = ["Envelope", "TraceContext", "format_ts", "new_event_id", "parse_ts", "traceparent"]

_last_ts: tuple[int, str] = (0, "1970-01-01T00:00:00.000000Z")


def format_ts(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC with microseconds."""
    global _last_ts
    last = _last_ts  # the events of one transaction share their time: format it once
    if last[0] == us:
        return last[1]
    text = datetime.fromtimestamp(us / 1_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _last_ts = (us, text)
    return text


_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))  # no two processes share a sequence
_id_prefix: tuple[int, str] = (0, "")
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # a hex digit's 2 low bits after 0b10


def new_event_id() -> str:
    """A new event id: a UUID (RFC 9562 version 7: Unix milliseconds, then 74 random bits) as text.

    Ids of later events sort later (to the millisecond), so unique indexes on them grow at one end. The
    random bits make ids unique, not secret: they come from a generator seeded per process by the OS.
    """
    global _id_prefix
    ms = time.time_ns() // 1_000_000
    if _id_prefix[0] != ms:  # the events of one transaction mostly share their millisecond
        h = f"{ms:012x}"
        _id_prefix = (ms, f"{h[:8]}-{h[8:]}-7")
    r = _random.getrandbits(80).to_bytes(10, "little").hex()  # random.randbytes, without its Python frame
    return f"{_id_prefix[1]}{r[:3]}-{_VARIANT[r[3]]}{r[4:7]}-{r[7:19]}"


def parse_ts(text: str) -> int:
    """RFC 3339 (as written by `format_ts`, or any offset) to microseconds since the epoch."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def traceparent(trace_id: str, span_id: str) -> str:
    """W3C traceparent header value (sampled)."""
    return f"00-{trace_id}-{span_id}-01"


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    traceparent: str = field(init=False, compare=False, repr=False)  # written once, read by every event

    def __post_init__(self) -> None:
        object.__setattr__(self, "traceparent", traceparent(self.trace_id, self.span_id))

    def as_dict(self) -> dict[str, str]:
        return {"trace_id": self.trace_id, "span_id": self.span_id, "traceparent": self.traceparent}


@dataclass(slots=True)
class Envelope:
    """One event. `id` is the de-duplication key everywhere.

    Treat it as a value: nothing changes an envelope once built (not frozen only because a frozen
    dataclass costs twice as much to build, and the runtime builds five per step)."""

    kind: EventKind
    occurred_us: int
    run_id: str
    workspace: str
    app: str
    trace: TraceContext
    payload: dict[str, Any]
    step_id: str | None = None
    attempt: int = 0
    id: str = field(default_factory=new_event_id)

    @property
    def scope(self) -> str:
        return CATALOG[self.kind].scope

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "schema_version": SCHEMA_VERSION,
            "occurred_at": format_ts(self.occurred_us),
            "run_id": self.run_id,
            "step_id": self.step_id,
            "attempt": self.attempt,
            "workspace": self.workspace,
            "app": self.app,
            "trace": self.trace.as_dict(),
            "payload": self.payload,
        }

    def to_json(self) -> str:
        """Compact JSON with non-ASCII characters kept."""
        d = self.to_dict()
        # the envelope's own fields are strings and integers by type: only the payload needs a look
        if (type(self.id) is str and type(self.run_id) is str and type(self.workspace) is str
                and type(self.app) is str and (self.step_id is None or type(self.step_id) is str)
                and type(self.attempt) is int and type(self.trace.trace_id) is str
                and type(self.trace.span_id) is str and plain(self.payload)):
            return compact_plain(d)
        return compact(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        t = d["trace"]
        return cls(
            kind=EventKind(d["kind"]),
            occurred_us=parse_ts(d["occurred_at"]),
            run_id=d["run_id"],
            step_id=d.get("step_id"),
            attempt=int(d.get("attempt") or 0),
            workspace=d["workspace"],
            app=d["app"],
            trace=TraceContext(t["trace_id"], t["span_id"]),
            payload=dict(d.get("payload") or {}),
            id=d["id"],
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        return cls.from_dict(json.loads(text))
