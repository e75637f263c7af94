"""The query model of Grafana's ClickHouse plugin (grafana-clickhouse-datasource v4, SQL editor),
as a grafana-foundation-sdk data query."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from fleetforge.adapters.views.grafana.contents import DATASOURCE_TYPE, DATASOURCE_UID, QueryType

__all__ = ["DATASOURCE", "ClickHouseQuery", "ClickHouseSql"]

DATASOURCE: Final = DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)

_FORMAT: Final = {"timeseries": 0, "table": 1}  # the plugin's Format enum: TIMESERIES=0, TABLE=1


class ClickHouseQuery(cogvariants.Dataquery):
    """One SQL-editor query of the ClickHouse plugin."""

    def __init__(self, raw_sql: str, query_type: QueryType = "table", ref_id: str = "A") -> None:
        self.raw_sql = raw_sql
        self.query_type = query_type
        self.ref_id = ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": DATASOURCE.to_json(),
            "editorType": "sql",
            "format": _FORMAT[self.query_type],
            "queryType": self.query_type,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class ClickHouseSql(cogbuilder.Builder[ClickHouseQuery]):
    """Builder of a `ClickHouseQuery` for panels' `with_target`."""

    def __init__(self, raw_sql: str, query_type: QueryType = "table", ref_id: str = "A") -> None:
        self._internal = ClickHouseQuery(raw_sql, query_type, ref_id)

    def build(self) -> ClickHouseQuery:
        return self._internal
