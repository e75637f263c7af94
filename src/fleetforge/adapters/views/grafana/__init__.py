"""Grafana artefacts generated from code: the "FleetForge Observability" dashboard and the provisioned
alert rules, both built from the shared SQL files (`deploy/otel/dashboards/panels/*.sql`,
`deploy/grafana/alerts/*.sql`). Regenerate with `python scripts/gen_grafana_dashboard.py`.

Build-time only: it needs grafana-foundation-sdk (a dev dependency); nothing at run time imports it.
"""
