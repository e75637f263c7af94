"""Write docs/events.md from the event catalog in fleetforge.domain.names (the single source)."""

from __future__ import annotations

import sys
from pathlib import Path

from fleetforge.domain.names import CATALOG, SCHEMA_VERSION, Metric

DOC = Path(__file__).resolve().parents[1] / "docs" / "events.md"


def render() -> str:
    lines = [
        "# Event catalog",
        "",
        f"Generated from `src/fleetforge/domain/names.py` (schema_version {SCHEMA_VERSION}) by",
        "`python scripts/gen_events_doc.py`; a test fails when this page and the code disagree.",
        "",
        "Every event is one envelope (DESIGN.md §3): `id` (the de-duplication key everywhere), `kind`,",
        "`schema_version`, `occurred_at` (RFC 3339, microseconds, UTC), `run_id`, `step_id` (null for run",
        "events), `attempt`, `workspace`, `app`, `trace` {`trace_id`, `span_id`, `traceparent`} and the",
        "kind's `payload` below. Run kinds land in `telemetry.run_events`, step kinds in",
        "`telemetry.step_events`. A field marked optional is left out of a payload when it would be empty:",
        "the `agent`, `call_id` and `tool` fields of an agent's LLM turns and tool calls.",
        "",
    ]
    for spec in CATALOG.values():
        lines += [f"## `{spec.kind}` ({spec.scope})", "", spec.doc[0].upper() + spec.doc[1:] + ".", "",
                  "| field | type | meaning |", "|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type}{' (optional)' if f.optional else ''} | {f.doc} |" for f in spec.fields]
        lines.append("")
    lines += ["## Metric names", "", "| OpenTelemetry name | Prometheus name |", "|---|---|"]
    lines += [f"| `{m.value}` | `{m.value.replace('.', '_')}` |" for m in Metric]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if DOC.read_text() == render() else 1)
    DOC.write_text(render())
