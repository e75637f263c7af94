"""Render the generated Grafana files from the repository's SQL files, and write or check them.

python scripts/gen_grafana_dashboard.py          # write
python scripts/gen_grafana_dashboard.py --check  # exit 1 when a committed file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from fleetforge.adapters.views.grafana.alerts import alert_rules_yaml
from fleetforge.adapters.views.grafana.board import dashboard_json, load_dir

__all__ = ["ALERTS_YAML", "DASHBOARD_JSON", "main", "render"]

DASHBOARDS: Final = Path("deploy/otel/dashboards")
DASHBOARD_JSON: Final = DASHBOARDS / "observability.json"
ALERTS_YAML: Final = Path("deploy/grafana/provisioning/alerting/fleetforge-alerts.yaml")


def render(root: Path) -> dict[Path, str]:
    """Relative path -> the text it must hold, for every generated file under `root` (the repository)."""
    panels = load_dir(root / DASHBOARDS / "panels")
    variables = {k: v.strip() for k, v in load_dir(root / DASHBOARDS / "variables").items()}
    return {
        DASHBOARD_JSON: dashboard_json(panels, variables),
        ALERTS_YAML: alert_rules_yaml(load_dir(root / "deploy" / "grafana" / "alerts")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the Grafana dashboard JSON and alert rules.")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[5],
        help="repository root (default: this checkout)",
    )
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in render(args.root).items():
        path = args.root / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    if args.check and stale:
        print(
            "out of date (run scripts/gen_grafana_dashboard.py): " + ", ".join(map(str, stale)),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
