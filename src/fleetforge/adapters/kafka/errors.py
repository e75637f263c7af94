"""Errors of the Kafka adapter, part of the project's exception tree."""

from __future__ import annotations

from fleetforge.domain.errors import FleetForgeError

__all__ = ["BusError"]


class BusError(FleetForgeError):
    """The Kafka-protocol broker or client failed in a way the caller must see."""
