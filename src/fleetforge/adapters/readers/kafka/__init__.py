"""Kafka/Redpanda adapter: the outbox forwarder, its configuration, and the consumer helper."""
