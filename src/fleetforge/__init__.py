"""FleetForge: durable, observable fleets of AI-agent workflows."""

__version__ = "0.1.0"
