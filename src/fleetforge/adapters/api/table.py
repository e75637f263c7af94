"""The route table of the HTTP API: every endpoint, from every module, in one place.

A new group of endpoints (approvals, pause/resume, fork, replay...) is a module with a `ROUTES` tuple
and one line here; the app, authentication and the OpenAPI document follow from it.
"""

from __future__ import annotations

from typing import Final

from fleetforge.adapters.api import control, events, runs
from fleetforge.adapters.api.routing import ApiRoute

__all__ = ["ROUTES"]

ROUTES: Final[tuple[ApiRoute, ...]] = (
    *runs.ROUTES,
    *events.ROUTES,
    *control.ROUTES,
)
