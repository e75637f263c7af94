"""Static checks of the files no test here can run (no Docker engine, no collector binary): the compose
stack, the collector configs and the Dockerfile parse, use the official images, and reference files and
pipelines that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy/compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text(encoding="utf-8"))
COLLECTORS = [ROOT / "deploy/otel/collector.local.yaml", COMPOSE_DIR / "otel-collector-config.yaml"]


def test_compose_services_use_the_official_images() -> None:
    images = {name: svc.get("image", "") for name, svc in COMPOSE["services"].items()}
    expected = {
        "clickhouse": "clickhouse/clickhouse-server:",
        "otel-collector": "otel/opentelemetry-collector-contrib:",
        "grafana": "grafana/grafana:",
        "prometheus": "prom/prometheus:",
        "redpanda": "redpandadata/redpanda:",
        "postgres": "postgres:",
    }
    for service, prefix in expected.items():
        assert images[service].startswith(prefix), (service, images[service])
        assert not images[service].endswith(":latest")
    fleetforge = [n for n, s in COMPOSE["services"].items() if "build" in s]
    assert {"fleetforge-init", "fleetforge-worker", "fleetforge-forwarder", "fleetforge-sink"} <= set(
        fleetforge
    )
    for name in fleetforge:
        build = COMPOSE["services"][name]["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"


def test_compose_bind_mounts_exist() -> None:
    for name, svc in COMPOSE["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), (name, volume)
            else:
                assert source in COMPOSE["volumes"], (name, volume)
    grafana = {
        v.split(":")[1]: (COMPOSE_DIR / v.split(":")[0]).resolve()
        for v in COMPOSE["services"]["grafana"]["volumes"]
        if v.startswith(".")
    }
    assert grafana["/etc/grafana/provisioning"] == ROOT / "deploy/grafana/provisioning"
    assert grafana["/etc/grafana/dashboards"] == ROOT / "deploy/otel/dashboards"
    assert (grafana["/etc/grafana/dashboards"] / "observability.json").is_file()


def test_compose_ports_and_grafana_plugin() -> None:
    def published(service: str) -> set[int]:
        return {int(str(p).split(":")[0]) for p in COMPOSE["services"][service].get("ports", [])}

    assert {8123, 9000} <= published("clickhouse")
    assert {4317, 4318, 9464} <= published("otel-collector")
    assert 3000 in published("grafana") and 9090 in published("prometheus")
    env = COMPOSE["services"]["grafana"]["environment"]
    assert "grafana-clickhouse-datasource" in env["GF_PLUGINS_PREINSTALL_SYNC"]
    # The datasource provisioning file expands these from Grafana's environment.
    datasource = (ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yaml").read_text(
        encoding="utf-8"
    )
    for var in re.findall(r"\$\{(\w+)\}", datasource):
        assert var in env, var
    assert COMPOSE["services"]["clickhouse"]["environment"]["CLICKHOUSE_DB"] == "telemetry"


def test_compose_dependencies_name_real_services() -> None:
    services = set(COMPOSE["services"])
    for name, svc in COMPOSE["services"].items():
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, (name, dep)


def test_compose_prometheus_scrapes_the_collector_and_loads_the_rules() -> None:
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["otel-collector:9464"]
    mounts = COMPOSE["services"]["prometheus"]["volumes"]
    assert any(m.startswith("../prometheus/alerts.yaml:/etc/prometheus/alerts.yaml") for m in mounts)
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yaml"]


def test_collector_configs_wire_otlp_to_clickhouse_and_prometheus() -> None:
    for path in COLLECTORS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        protocols = doc["receivers"]["otlp"]["protocols"]
        assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(
            ":4318"
        )
        ch = doc["exporters"]["clickhouse"]
        assert ch["database"] == "telemetry" and ch["traces_table_name"] == "otel_traces"
        assert ch["logs_table_name"] == "otel_logs"
        assert doc["exporters"]["prometheus"]["endpoint"].endswith(":9464")
        defined = {
            kind: set(doc.get(kind, {})) for kind in ("receivers", "processors", "exporters", "extensions")
        }
        pipelines = doc["service"]["pipelines"]
        assert set(pipelines) == {"traces", "metrics", "logs"}
        for name, pipeline in pipelines.items():
            for kind in ("receivers", "processors", "exporters"):
                assert set(pipeline.get(kind, [])) <= defined[kind], (path.name, name, kind)
            assert "clickhouse" in pipeline["exporters"]
        assert "prometheus" in pipelines["metrics"]["exporters"]
        assert set(doc["service"].get("extensions", [])) <= defined["extensions"]


def test_collector_tables_are_the_embedded_receivers_tables() -> None:
    ddl = (ROOT / "src/fleetforge/adapters/devstack/otel_tables.sql").read_text(encoding="utf-8")
    tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS telemetry\.(\w+)", ddl))
    for path in COLLECTORS:
        ch = yaml.safe_load(path.read_text(encoding="utf-8"))["exporters"]["clickhouse"]
        named = {
            ch["traces_table_name"],
            ch["logs_table_name"],
            *(t["name"] for t in ch["metrics_tables"].values()),
        }
        assert named <= tables, named - tables


def test_dockerfile_installs_the_package_and_points_at_the_repository_files() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.1\d", text, re.M)
    assert "pip install ." in text and 'ENTRYPOINT ["fleetforge"]' in text
    for var, path in re.findall(r"(FLEETFORGE_\w+_(?:DIR|FILE))=/app/(\S+)", text):
        assert (ROOT / path).exists(), (var, path)
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied
