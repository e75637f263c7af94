"""The dashboard panel SQL files of `deploy/otel/dashboards/panels/` (shared with Grafana).

Found, in order, under `FLEETFORGE_DASHBOARDS_DIR`, beside the source tree of an editable install
(the repository's `deploy/otel/dashboards`), or under `<prefix>/share/fleetforge/dashboards`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

from fleetforge.domain.errors import ConfigError

__all__ = ["dashboards_dir", "load_panels"]

ENV_DIR: Final = "FLEETFORGE_DASHBOARDS_DIR"


def dashboards_dir() -> Path:
    """The folder holding observability.json and panels/; ConfigError when none is found."""
    here = Path(__file__).resolve()
    tried = [Path(p) for p in [os.environ.get(ENV_DIR)] if p]
    tried += [here.parents[5] / "deploy" / "otel" / "dashboards",
              Path(sys.prefix) / "share" / "fleetforge" / "dashboards"]
    for path in tried:
        if (path / "panels").is_dir():
            return path
    raise ConfigError("cannot find the dashboard panel SQL files (panels/*.sql): looked in "
                      + ", ".join(map(str, tried)) + f"; set {ENV_DIR} to the repository's deploy/otel/dashboards")


def load_panels() -> dict[str, str]:
    """Panel id (file stem) -> SQL text."""
    folder = dashboards_dir() / "panels"
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.sql"))}
