"""Retention settings: durations, env vars, the lease time."""

from __future__ import annotations

import pytest

from fleetforge.adapters.cli.retention import settings_from_env
from fleetforge.core.retention import DEFAULT_SETTINGS, RetentionSettings
from fleetforge.domain.envparse import duration as parse_duration
from fleetforge.domain.envparse import format_duration
from fleetforge.domain.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("7d", 604800.0), ("2w", 1209600.0),
    ("250ms", 0.25), (" 1.5H ", 5400.0), ("0", None), ("off", None), ("never", None), ("0s", None),
])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text, "X") == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1h", "1y", "h"])
def test_parse_duration_rejects_with_the_name_and_the_forms(text: str) -> None:
    with pytest.raises(ConfigError, match=r"FLEETFORGE_X: got .*expected a duration such as 90s"):
        parse_duration(text, "FLEETFORGE_X")


def test_a_limit_cannot_be_off() -> None:
    with pytest.raises(ConfigError, match="positive duration"):
        parse_duration("off", "L", allow_off=False)


def test_format_duration_round_trips() -> None:
    for seconds in (None, 1.0, 90.0, 3600.0, 604800.0, 0.25):
        assert parse_duration(format_duration(seconds), "X") == seconds


def test_settings_from_env() -> None:
    assert settings_from_env({}) == DEFAULT_SETTINGS
    got = settings_from_env({"FLEETFORGE_OUTBOX_RETENTION": "10m", "FLEETFORGE_RUN_RETENTION": "off",
                             "FLEETFORGE_READER_LAG_LIMIT": "5m", "FLEETFORGE_RETENTION_INTERVAL": "5s",
                             "FLEETFORGE_RETENTION_BATCH": "100"})
    assert got == RetentionSettings(outbox_window_s=600.0, run_window_s=None, reader_lag_limit_s=300.0,
                                    interval_s=5.0, batch=100)
    with pytest.raises(ConfigError, match="FLEETFORGE_RETENTION_BATCH: got 'many'"):
        settings_from_env({"FLEETFORGE_RETENTION_BATCH": "many"})
    with pytest.raises(ConfigError, match="FLEETFORGE_RETENTION_INTERVAL"):
        settings_from_env({"FLEETFORGE_RETENTION_INTERVAL": "0"})
    assert got.lease_ttl_ms == 30_000 and DEFAULT_SETTINGS.lease_ttl_ms == 125_000
