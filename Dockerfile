# FleetForge: the `fleetforge` command with the repository's SQL, dashboards and plugin manifests.
#   docker build -t fleetforge:local .
#   docker run --rm fleetforge:local demo --no-serve --json
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .
COPY deploy ./deploy
COPY plugins ./plugins
COPY examples ./examples

# The installed package finds the repository files through these.
ENV FLEETFORGE_DASHBOARDS_DIR=/app/deploy/otel/dashboards \
    FLEETFORGE_COMPOSE_FILE=/app/deploy/compose/docker-compose.yaml \
    FLEETFORGE_DATA_DIR=/data \
    OTEL_EXPORTER_PROMETHEUS_HOST=0.0.0.0

RUN useradd --create-home --uid 10001 fleetforge && mkdir -p /data && chown fleetforge /data
USER fleetforge
VOLUME ["/data"]
EXPOSE 8080 9464

ENTRYPOINT ["fleetforge"]
CMD ["--help"]
