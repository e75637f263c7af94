"""The "FleetForge Observability" Grafana dashboard, rendered with grafana-foundation-sdk from the
panel specs of `spec.py` and the panel SQL files shared with the built-in dashboard."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as gmodel
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode

from fleetforge.adapters.views.grafana.contents import (
    DASHBOARD_TITLE,
    DASHBOARD_UID,
    FLAKE_SLO,
    PANELS,
    SUCCESS_SLO,
    PanelSpec,
    panel_sql,
)
from fleetforge.adapters.views.grafana.query import DATASOURCE, ClickHouseSql

__all__ = ["build_dashboard", "dashboard_json", "load_dir"]


def _unit_overrides(builder: Any, units: Mapping[str, str]) -> Any:
    for column, unit in units.items():
        builder = builder.override_by_name(column, [gmodel.DynamicConfigValue(id_val="unit", value=unit)])
    return builder


def _stat(spec: PanelSpec) -> stat.Panel:
    return (
        stat.Panel()
        .reduce_options(ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields(""))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .no_value("0")
    )


def _timeseries(spec: PanelSpec) -> timeseries.Panel:
    panel = timeseries.Panel().legend(
        VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
    )
    if spec.wrapper == "success_slo":
        panel = (
            panel.min(0)
            .max(1)
            .thresholds(
                gdash.ThresholdsConfig()
                .mode(gmodel.ThresholdsMode.ABSOLUTE)
                .steps(
                    [
                        gmodel.Threshold(color="red", value=None),
                        gmodel.Threshold(color="green", value=SUCCESS_SLO),
                    ]
                )
            )
            .thresholds_style(GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED))
        )
    if spec.source == "policy_bursts":
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(80)
            .stacking(StackingConfig().mode(common.StackingMode.NORMAL))
            .override_by_regexp(
                ".*deny.*",
                [gmodel.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})],
            )
        )
    if spec.source == "budget_burndown":
        panel = panel.override_by_regexp(
            "tokens_limit.*",
            [gmodel.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})],
        )
    return panel


def _table(spec: PanelSpec) -> table.Panel:
    panel = table.Panel()
    if spec.wrapper == "retry_matrix":
        panel = (
            panel.with_transformation(
                gmodel.DataTransformerConfig(
                    id_val="groupingToMatrix",
                    options={
                        "columnField": "attempt",
                        "rowField": "step",
                        "valueField": "steps",
                        "emptyValue": "zero",
                    },
                )
            )
            .color_scheme(gdash.FieldColor().mode(gmodel.FieldColorModeId.CONTINUOUS_GR_YL_RD))
            .override_by_regexp(
                "^[0-9]+$",
                [
                    gmodel.DynamicConfigValue(
                        id_val="custom.cellOptions", value={"type": "color-background", "mode": "gradient"}
                    )
                ],
            )
        )
    if spec.source == "tool_flakes":
        panel = panel.override_by_name(
            "flake_rate",
            [
                gmodel.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
                gmodel.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [
                            {"color": "green", "value": None},
                            {"color": "orange", "value": FLAKE_SLO},
                            {"color": "red", "value": 4 * FLAKE_SLO},
                        ],
                    },
                ),
            ],
        )
    if spec.wrapper == "exhaustion":
        panel = panel.no_value("-")
    return panel


def _heatmap(spec: PanelSpec) -> heatmap.Panel:
    return (
        heatmap.Panel()
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .exponent(0.5)
            .steps(64)
            .reverse(False)
            .fill("dark-orange")
        )
    )


_KINDS: Final[dict[str, Callable[[PanelSpec], Any]]] = {
    "stat": _stat,
    "timeseries": _timeseries,
    "table": _table,
    "heatmap": _heatmap,
}


def _variable(name: str, label: str, sql: str) -> gdash.QueryVariable:
    return (
        gdash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(sql)
        .multi(True)
        .include_all(True)
        .current(gmodel.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .refresh(gmodel.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(gmodel.VariableSort.ALPHABETICAL_ASC)
    )


def build_dashboard(panels: Mapping[str, str], variables: Mapping[str, str]) -> gmodel.Dashboard:
    """The dashboard from panel SQL (file stem -> text) and variable SQL (workspace, app -> text)."""
    board = (
        gdash.Dashboard(DASHBOARD_TITLE)
        .uid(DASHBOARD_UID)
        .description(
            "Run MTTR and success SLO, step retries, budget burn-down with projected "
            "exhaustion, policy violation bursts and tool flake rates, from FleetForge's "
            "ClickHouse derived tables (deploy/clickhouse/materialized_views.sql)."
        )
        .tags(["fleetforge", "clickhouse", "slo"])
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("utc")
        .tooltip(gmodel.DashboardCursorSync.CROSSHAIR)
        .with_variable(_variable("workspace", "Workspace", variables["workspace"]))
        .with_variable(_variable("app", "App", variables["app"]))
    )
    for panel_id, spec in enumerate(PANELS, start=1):
        builder = _KINDS[spec.kind](spec)
        x, y, w, h = spec.grid
        builder = (
            builder.id(panel_id)
            .title(spec.title)
            .description(spec.description)
            .datasource(DATASOURCE)
            .grid_pos(gmodel.GridPos(x=x, y=y, w=w, h=h))
            .with_target(ClickHouseSql(panel_sql(panels[spec.source], spec.wrapper), spec.query_type))
        )
        builder = _unit_overrides(builder, spec.units)
        board = board.with_panel(builder)
    return board.build()


def dashboard_json(panels: Mapping[str, str], variables: Mapping[str, str]) -> str:
    """The dashboard as the JSON text committed in deploy/otel/dashboards/observability.json."""
    doc = json.loads(json.dumps(build_dashboard(panels, variables), cls=JSONEncoder))
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def load_dir(folder: Path) -> dict[str, str]:
    """File stem -> text of the *.sql files of `folder`."""
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.sql"))}
