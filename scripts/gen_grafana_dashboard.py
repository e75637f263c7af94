#!/usr/bin/env python3
"""Generate deploy/otel/dashboards/observability.json and the Grafana alert rules from the SQL files.

Needs grafana-foundation-sdk (in the dev extras). `--check` exits 1 when a committed file is stale.
"""

from fleetforge.adapters.views.grafana.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
