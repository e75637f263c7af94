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
