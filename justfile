# FleetForge recipes (`pip install rust-just` provides `just`).

# Run the sample fleet end to end on the embedded stores
demo *ARGS:
    fleetforge demo {{ARGS}}

# Install what the tests need and run the whole suite (what CI runs)
test *ARGS:
    ./scripts/test {{ARGS}}

# Benchmarks (figures beside their baselines)
bench-scheduler *ARGS:
    python3 bench/scheduler/bench.py {{ARGS}}

# Local observability stack: docker compose with a Docker engine, else the embedded stack (docs/observability.md)
observability *ARGS:
    fleetforge observability up --detach {{ARGS}}

# Stop it
observability-down *ARGS:
    fleetforge observability down {{ARGS}}

# Smoke-test the Kafka forwarder configuration; exits 0 only when it is transactional.
# Usage: just check-transactional-forwarder [FILE] [--connect] [--json]
# FILE defaults to $FLEETFORGE_KAFKA_CONFIG, else deploy/kafka/forwarder.toml.
check-transactional-forwarder config=env_var_or_default("FLEETFORGE_KAFKA_CONFIG", "deploy/kafka/forwarder.toml") *flags="":
    fleetforge check-transactional-forwarder --config "{{config}}" {{flags}}
