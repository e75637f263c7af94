"""Choose the analytics backend: chDB under a data dir, or a ClickHouse server by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fleetforge.domain.errors import ConfigError
from fleetforge.ports.analytics import AnalyticsStore

__all__ = ["CHDB_SUBDIR", "chdb_dir", "open_analytics"]

CHDB_SUBDIR: Final = "clickhouse"
DEFAULT_DATA_DIR: Final = Path(".fleetforge")


def chdb_dir(data_dir: Path | None) -> Path:
    """The chDB data dir inside a FleetForge data dir (default ./.fleetforge/clickhouse)."""
    return (data_dir or DEFAULT_DATA_DIR) / CHDB_SUBDIR


def open_analytics(*, data_dir: Path | None = None, clickhouse_url: str | None = None,
                   explicit_data_dir: bool = False) -> AnalyticsStore:
    """A ClickHouse server when `clickhouse_url` is given, else chDB under `data_dir`."""
    if clickhouse_url and explicit_data_dir:
        raise ConfigError("got both --data-dir and --clickhouse-url (or FLEETFORGE_CLICKHOUSE_URL), "
                          "expected one: --data-dir for embedded chDB, --clickhouse-url for a server")
    if clickhouse_url:
        from fleetforge.adapters.readers.clickhouse.server_backend import ClickHouseServerAnalytics

        return ClickHouseServerAnalytics(clickhouse_url)
    from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics

    return ChdbAnalytics(chdb_dir(data_dir))
