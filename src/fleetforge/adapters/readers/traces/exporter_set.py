"""Start the configured trace exporters in-process: `start_exporters(store) -> ExporterSet`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.metrics import Meter

from fleetforge.adapters.readers.traces.discovery import Discovery, discover
from fleetforge.adapters.readers.traces.outbox import OutboxPages
from fleetforge.adapters.readers.traces.pipeline import Exporter
from fleetforge.adapters.readers.traces.platform_registry import platform_for
from fleetforge.ports.store import Store

__all__ = ["ExporterSet", "platform_for", "start_exporters"]

log = logging.getLogger("fleetforge.exporters")


class ExporterSet:
    """The running exporters (possibly none). Stop them with `stop(timeout)`, which drains."""

    def __init__(self, discovery: Discovery, exporters: list[Exporter]) -> None:
        self.discovery = discovery
        self.exporters = exporters

    def __bool__(self) -> bool:
        return bool(self.exporters)

    def __enter__(self) -> ExporterSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wake(self, *_: object) -> None:
        """Make every exporter read the outbox now (usable as, or chained into, a Worker observer)."""
        for e in self.exporters:
            e.wake()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every exporter read the outbox to its end and delivered what finished."""
        deadline = time.monotonic() + timeout
        return all(e.wait_idle(max(0.0, deadline - time.monotonic())) for e in self.exporters)

    def stop(self, timeout: float = 10.0) -> bool:
        """Drain and stop every exporter within `timeout` s in total; True when all delivered everything."""
        deadline = time.monotonic() + timeout
        for e in self.exporters:
            e.request_stop()  # all drain at once
        ok = True
        for e in self.exporters:
            ok = e.stop(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def status(self) -> list[dict[str, Any]]:
        """One dict per exporter: name, state, counters and the last error (never a credential)."""
        return [{"name": e.name, "endpoint": e.config.base_url, "state": e.info.state,
                 "events_read": e.info.events_read, "spans_delivered": e.info.spans_delivered,
                 "spans_rejected": e.info.spans_rejected, "retries": e.info.retries,
                 "last_error": e.info.last_error} for e in self.exporters]


def start_exporters(
    store: Store,
    env: Mapping[str, str] | None = None,
    *,
    plugins_dir: Path | None = None,
    meter: Meter | None = None,
    client: httpx.Client | None = None,
    logger: logging.Logger = log,
) -> ExporterSet:
    """Start every exporter that FLEETFORGE_TRACE_EXPORTERS, the manifests and the credentials allow.

    Never raises for configuration problems: each one is logged once and that exporter stays off.
    """
    discovery = discover(os.environ if env is None else env, plugins_dir)
    discovery.report(logger)
    exporters = []
    pages = OutboxPages(store)
    for config in discovery.active:
        exporter = Exporter(config, platform_for(config), store, client=client, meter=meter, pages=pages,
                            logger=logger)
        exporters.append(exporter.start())
    return ExporterSet(discovery, exporters)
