"""docs/events.md is generated from the catalog and must match it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_events_doc_matches_catalog() -> None:
    spec = importlib.util.spec_from_file_location("gen_events_doc", ROOT / "scripts" / "gen_events_doc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "events.md").read_text() == module.render(), (
        "docs/events.md is stale: run `python scripts/gen_events_doc.py`"
    )
