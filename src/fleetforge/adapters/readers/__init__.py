"""Readers of the outbox, each run by core.readers.ReaderLoop: Kafka, ClickHouse, telemetry, traces."""
