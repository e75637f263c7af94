"""The event envelope (schema_version 1), identical in the outbox, Kafka, ClickHouse and exporters."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetforge.domain.names import CATALOG, SCHEMA_VERSION, EventKind

__all__ = ["Envelope", "TraceContext", "format_ts", "parse_ts", "traceparent"]


def format_ts(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

    def as_dict(self) -> dict[str, str]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "traceparent": traceparent(self.trace_id, self.span_id),
        }


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event. `id` is the de-duplication key everywhere."""

    kind: EventKind
    occurred_us: int
    run_id: str
    workspace: str
    app: str
    trace: TraceContext
    payload: dict[str, Any]
    step_id: str | None = None
    attempt: int = 0
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

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
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

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
