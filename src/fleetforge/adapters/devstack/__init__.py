"""The local observability stack of `fleetforge observability up|down|status`: with a Docker engine the
compose stack (deploy/compose/docker-compose.yaml); without one an embedded stack in one process
(a read-only chDB-backed ClickHouse HTTP endpoint, an OTLP receiver writing the collector exporter's
tables, the received metrics for Prometheus, and the outbox sink). See docs/observability.md."""

from fleetforge.adapters.devstack.stack import EmbeddedStack, StackConfig, read_state

__all__ = ["EmbeddedStack", "StackConfig", "read_state"]
