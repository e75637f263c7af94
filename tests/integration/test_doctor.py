"""`fleetforge doctor` against a healthy stack (PostgreSQL + Tansu + chDB) and against each broken part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.core.diagnosis import Check, Verdict, age_verdict, exit_code, overall
from tests.chaos.topology import PG_ADMIN, pg_available, submit_specs
from tests.fixtures.kafka import create_topic, free_port, tansu_broker  # noqa: F401
from tests.integration.clickhouse_fleet import fleet_specs
from tests.support import need

pytestmark = [pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]


def _db_url(name: str) -> str:
    return f"{PG_ADMIN.rpartition('/')[0]}/{name}"


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards); yields its URL."""
    need(pg_available(), f"PostgreSQL at {PG_ADMIN}")
    name = f"ff_doctor_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _db_url(name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated(database: str) -> str:
    store = PostgresStore(database)
    store.migrate()
    store.close()
    return database


@pytest.fixture(scope="module")
def analytics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose chDB holds the full schema (made in a subprocess: chDB owns one dir per process)."""
    root = tmp_path_factory.mktemp("doctor-ch")
    _ff("analytics", "apply", "--data-dir", str(root), env=_base_env())
    return root


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_", "LANGSMITH_",
                                                                       "LANGFUSE_", "PHOENIX_"))}
    env.update({"OTEL_EXPORTER_PROMETHEUS_PORT": "0", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def _ff(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "fleetforge", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    if check and done.returncode != 0:
        raise AssertionError(f"fleetforge {args} exited {done.returncode}: {done.stderr}")
    return done


def doctor(*args: str, **env: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """(exit code, checks by name, raw stdout)."""
    done = _ff("doctor", "--json", *args, env=_base_env(**env), check=False)
    doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, {c["check"]: c for c in doc["checks"]}, done.stdout


def _healthy_env(bootstrap: str) -> dict[str, str]:
    return {"FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FLEETFORGE_KAFKA_TRANSACTIONAL_ID": "ff-doctor"}


# -- pure verdict logic ----------------------------------------------------------------------------------


def test_verdict_ordering_and_exit_code() -> None:
    checks = [Check("a", Verdict.OK, ""), Check("b", Verdict.SKIP, ""), Check("c", Verdict.WARN, "")]
    assert overall(checks) is Verdict.WARN and exit_code(checks) == 0
    checks.append(Check("d", Verdict.FAIL, "", "fix"))
    assert overall(checks) is Verdict.FAIL and exit_code(checks) == 1
    assert overall([Check("s", Verdict.SKIP, "")]) is Verdict.SKIP
    assert age_verdict(None) is Verdict.OK and age_verdict(5) is Verdict.OK
    assert age_verdict(120) is Verdict.WARN and age_verdict(3600) is Verdict.FAIL


# -- a healthy stack -------------------------------------------------------------------------------------


def test_healthy_stack_all_ok(migrated: str, analytics_dir: Path, tansu_broker: str) -> None:  # noqa: F811
    create_topic(tansu_broker, "fleetforge.events", partitions=3)
    code, checks, _ = doctor("--store", migrated, "--data-dir", str(analytics_dir), **_healthy_env(tansu_broker))
    expected_ok = ["state store", "outbox backlog: kafka-forwarder", "broker", "delivery mode", "clickhouse",
                   "clickhouse raw tables", "clickhouse derived tables", "clickhouse materialized views",
                   "clickhouse freshness"]
    for name in expected_ok:
        assert checks[name]["verdict"] == "OK", checks[name]
    skipped = {n for n, c in checks.items() if c["verdict"] == "SKIP"}
    assert skipped == {"otlp endpoint", "prometheus endpoint", "trace exporters"}
    assert all(checks[n]["fix"] for n in skipped), "a SKIP says how to configure the part"
    assert code == 0


def test_nothing_configured_is_all_skip() -> None:
    code, checks, _ = doctor()
    assert {c["verdict"] for c in checks.values()} == {"SKIP"}
    assert "FLEETFORGE_STORE_URL" in checks["state store"]["fix"]
    assert code == 0


# -- each broken part ------------------------------------------------------------------------------------


def test_unreachable_store_fails_without_leaking_the_password() -> None:
    url = f"postgresql://fleet:s3cret-pw@127.0.0.1:{free_port()}/nope"
    code, checks, raw = doctor("--store", url)
    assert checks["state store"]["verdict"] == "FAIL"
    assert "start the database" in checks["state store"]["fix"]
    assert "s3cret-pw" not in raw
    assert code == 1


def test_unmigrated_store_fails_with_migrate_fix(database: str) -> None:
    code, checks, _ = doctor("--store", database)
    assert checks["state store"]["verdict"] == "FAIL"
    assert "schema version 0" in checks["state store"]["detail"]
    assert "fleetforge migrate" in checks["state store"]["fix"]
    assert code == 1


def test_aged_backlog_warns_then_fails(migrated: str) -> None:
    submit_specs(migrated, fleet_specs(2, 1))  # nobody consumes: the embedded sink's backlog grows
    code, checks, _ = doctor("--store", migrated, "--backlog-warn-s", "0", "--backlog-fail-s", "3600")
    backlog = checks["outbox backlog: clickhouse-sink"]
    assert backlog["verdict"] == "WARN" and "events behind" in backlog["detail"]
    assert code == 0
    code, checks, _ = doctor("--store", migrated, "--backlog-warn-s", "0", "--backlog-fail-s", "0")
    backlog = checks["outbox backlog: clickhouse-sink"]
    assert backlog["verdict"] == "FAIL" and "start it" in backlog["fix"]
    assert code == 1


def test_broker_down_fails_and_at_least_once_warns() -> None:
    code, checks, _ = doctor(FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    assert checks["broker"]["verdict"] == "FAIL"
    assert "FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS" in checks["broker"]["fix"]
    assert checks["delivery mode"]["verdict"] == "WARN"
    assert "FLEETFORGE_KAFKA_TRANSACTIONAL_ID" in checks["delivery mode"]["fix"]
    assert code == 1


def test_clickhouse_schema_missing_fails(tmp_path: Path) -> None:
    (tmp_path / "clickhouse").mkdir()
    code, checks, _ = doctor("--data-dir", str(tmp_path))
    for label in ("raw tables", "derived tables", "materialized views"):
        assert checks[f"clickhouse {label}"]["verdict"] == "FAIL"
        assert "fleetforge analytics apply" in checks[f"clickhouse {label}"]["fix"]
    assert code == 1


def test_otlp_refused_fails_and_prometheus_silent_warns() -> None:
    port = free_port()
    code, checks, _ = doctor(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                             OTEL_EXPORTER_PROMETHEUS_PORT=str(free_port()))
    assert checks["otlp endpoint"]["verdict"] == "FAIL"
    assert "collector" in checks["otlp endpoint"]["fix"]
    assert checks["prometheus endpoint"]["verdict"] == "WARN"
    assert "nothing listens" in checks["prometheus endpoint"]["detail"]
    assert code == 1


def test_prometheus_serving_is_ok() -> None:
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    Counter("fleetforge_doctor_probe", "probe", registry=registry).inc()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        _, checks, _ = doctor(OTEL_EXPORTER_PROMETHEUS_PORT=str(port))
    finally:
        server.shutdown()
        thread.join(5)
    assert checks["prometheus endpoint"]["verdict"] == "OK"


def test_bad_manifest_and_missing_credentials_fail(tmp_path: Path) -> None:
    (tmp_path / "exporters").mkdir()
    (tmp_path / "exporters" / "langsmith.toml").write_text('name = "langsmith"\n', encoding="utf-8")
    (tmp_path / "exporters" / "phoenix.toml").write_text('name = "phoenix"\nbogus = 1\n', encoding="utf-8")
    (tmp_path / "exporters" / "langfuse.toml").write_text('name = "langfuse"\n', encoding="utf-8")
    code, checks, raw = doctor(FLEETFORGE_TRACE_EXPORTERS="langsmith,phoenix,langfuse",
                               FLEETFORGE_PLUGINS_DIR=str(tmp_path),
                               LANGFUSE_PUBLIC_KEY="pk-lf-visible", LANGFUSE_SECRET_KEY="sk-lf-hidden-value",
                               LANGFUSE_BASE_URL="http://127.0.0.1:9")
    assert checks["exporter langsmith"]["verdict"] == "FAIL"
    assert "LANGSMITH_API_KEY" in checks["exporter langsmith"]["detail"]
    assert checks["exporter phoenix"]["verdict"] == "FAIL"
    assert "malformed" in checks["exporter phoenix"]["detail"]
    assert checks["exporter langfuse"]["verdict"] == "OK"
    assert "sk-lf-hidden-value" not in raw
    assert code == 1


def test_table_output_and_exit_code() -> None:
    done = _ff("doctor", env=_base_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}"),
               check=False)
    assert done.returncode == 1
    for word in ("check", "verdict", "fix", "FAIL", "SKIP", "otlp endpoint"):
        assert word in done.stdout
