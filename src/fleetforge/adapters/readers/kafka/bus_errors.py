"""Errors of the Kafka adapter, part of the project's exception tree."""

from __future__ import annotations

from fleetforge.domain.errors import FleetForgeError

__all__ = ["BusError", "DeliveryFailed"]


class BusError(FleetForgeError):
    """The Kafka-protocol broker or client failed in a way the caller must see."""


class DeliveryFailed(BusError):
    """A batch was not (or not certainly) delivered; the reader loop hands it again after a backoff.

    `error_kind` names the failure in `fleetforge.delivery.failed` (a librdkafka error name).
    """

    def __init__(self, message: str, error_kind: str) -> None:
        super().__init__(message)
        self.error_kind = error_kind
