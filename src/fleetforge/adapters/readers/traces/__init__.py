"""Trace exporters: every outbox event, as run/attempt/policy spans, to LangSmith, Langfuse and Phoenix.

Each exporter reads the outbox through its own cursor, so a platform outage never blocks the
runtime, Kafka or ClickHouse, and loses nothing within the outbox's retention.
"""

from fleetforge.adapters.readers.traces.discovery import Discovery, discover
from fleetforge.adapters.readers.traces.exporter_set import ExporterSet, start_exporters

__all__ = ["Discovery", "ExporterSet", "discover", "start_exporters"]
