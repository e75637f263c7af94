"""The trace platforms by name: adding one is its module (with a `SPEC`) plus one line here."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from fleetforge.adapters.readers.traces import langfuse, langsmith, phoenix
from fleetforge.adapters.readers.traces.platform_spec import ExporterConfig, Platform, PlatformSpec
from fleetforge.domain.errors import ConfigError

__all__ = ["PLATFORMS", "known", "platform_for", "spec_for"]

PLATFORMS: Final[Mapping[str, PlatformSpec]] = MappingProxyType({s.name: s for s in (
    langfuse.SPEC,
    langsmith.SPEC,
    phoenix.SPEC,
)})


def known() -> str:
    """The platform names, comma separated (for messages)."""
    return ", ".join(sorted(PLATFORMS))


def spec_for(name: str) -> PlatformSpec:
    """The spec named `name`; ConfigError naming the known ones otherwise (never another platform)."""
    spec = PLATFORMS.get(name)
    if spec is None:
        raise ConfigError(f"unknown trace platform {name!r} (known: {known()})")
    return spec


def platform_for(config: ExporterConfig) -> Platform:
    """The encoder of an exporter config, by its platform name."""
    return spec_for(config.name).encoder(config)
