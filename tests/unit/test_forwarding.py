"""Unit tests of the forwarder's pure logic, its configuration, and its commands (no broker)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import typer
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from fleetforge.adapters.cli.forwarder import check_config, register
from fleetforge.adapters.readers.kafka.bus_config import BusConfig, load_bus_config, redact_props
from fleetforge.adapters.readers.kafka.consumer import consumer_config
from fleetforge.adapters.readers.kafka.publishers import kafka_action
from fleetforge.core.forwarding import (
    Backoff,
    DeliveryMode,
    TxnAction,
    classify_txn_error,
    config_problems,
    delivery_mode,
    format_position,
    parse_position,
    traceparent_of,
)
from fleetforge.domain.envelope import Envelope, TraceContext
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.names import EventKind

# -- core -------------------------------------------------------------------------------------------


def test_mode_is_transactional_exactly_when_an_id_is_set() -> None:
    assert delivery_mode("fwd-1") is DeliveryMode.TRANSACTIONAL
    assert delivery_mode(None) is DeliveryMode.AT_LEAST_ONCE
    assert delivery_mode("") is DeliveryMode.AT_LEAST_ONCE


def test_sound_transactional_config_has_no_problems() -> None:
    assert config_problems({"transactional.id": "fwd-1", "transaction.timeout.ms": "60000"},
                           {"isolation.level": "read_committed"}) == []


@pytest.mark.parametrize(("producer", "consumer", "starts"), [
    ({}, {}, "transactional.id is not set"),
    ({"transactional.id": "x", "enable.idempotence": "false"}, {}, "enable.idempotence"),
    ({"transactional.id": "x", "acks": "1"}, {}, "acks"),
    ({"transactional.id": "x", "max.in.flight.requests.per.connection": "10"}, {}, "max.in.flight"),
    ({"transactional.id": "x", "retries": "0"}, {}, "retries"),
    ({"transactional.id": "x", "transaction.timeout.ms": "900001"}, {}, "transaction.timeout.ms"),
    ({"transactional.id": "x", "transaction.timeout.ms": "soon"}, {}, "transaction.timeout.ms"),
    ({"transactional.id": "x"}, {"isolation.level": "read_uncommitted"}, "consumer isolation.level"),
    ({"transactional.id": "x"}, {"enable.auto.commit": "true"}, "consumer enable.auto.commit"),
])
def test_each_misconfiguration_is_named_with_its_fix(producer: dict[str, str], consumer: dict[str, str],
                                                    starts: str) -> None:
    problems = config_problems(producer, consumer)
    assert len(problems) == 1
    assert problems[0].startswith(starts)


def test_transaction_timeout_is_checked_against_the_broker_maximum() -> None:
    props = {"transactional.id": "x", "transaction.timeout.ms": "120000"}
    assert config_problems(props, {}, broker_max_txn_timeout_ms=60_000)
    assert not config_problems(props, {}, broker_max_txn_timeout_ms=900_000)


@pytest.mark.parametrize(("flags", "action"), [
    ({"fatal": True, "txn_requires_abort": True}, TxnAction.RECREATE),
    ({"txn_requires_abort": True}, TxnAction.ABORT),
    ({"timed_out": True, "retriable": True}, TxnAction.ABORT),
    ({"retriable": True}, TxnAction.RETRY),
    ({}, TxnAction.RECREATE),
])
def test_error_triage(flags: dict[str, bool], action: TxnAction) -> None:
    full = {"retriable": False, "txn_requires_abort": False, "fatal": False, "timed_out": False, **flags}
    assert classify_txn_error(**full) is action


def test_confluent_kafka_errors_are_triaged() -> None:
    fenced = KafkaException(KafkaError(KafkaError._FENCED, fatal=True))
    abortable = KafkaException(KafkaError(KafkaError._STATE, txn_requires_abort=True))
    timeout = KafkaException(KafkaError(KafkaError._TIMED_OUT, retriable=True))
    retriable = KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True))
    assert kafka_action(fenced) is TxnAction.RECREATE
    assert kafka_action(abortable) is TxnAction.ABORT
    assert kafka_action(timeout) is TxnAction.ABORT
    assert kafka_action(retriable) is TxnAction.RETRY
    assert kafka_action(KafkaException("no error object")) is TxnAction.RECREATE


def test_backoff_grows_jittered_up_to_its_cap_and_resets() -> None:
    b = Backoff(initial_s=0.1, max_s=1.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 1.0 for d in delays) and delays[-1] >= 0.5
    b.reset()
    assert b.next_delay() <= 0.1


def test_positions_round_trip() -> None:
    assert format_position((12, 345)) == "12:345"
    assert parse_position("12:345") == (12, 345)
    with pytest.raises(ValueError):
        parse_position("345")


def test_traceparent_is_read_from_the_envelope() -> None:
    env = Envelope(kind=EventKind.RUN_STARTED, occurred_us=1, run_id="r", workspace="w", app="a",
                   trace=TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"), payload={})
    assert traceparent_of(env.to_json()) == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    spaced = json.dumps(env.to_dict(), indent=2)
    assert traceparent_of(spaced) == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert traceparent_of("{}") == "" and traceparent_of("not json") == ""


# -- BusConfig --------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bus.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_then_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """
[bus]
bootstrap_servers = ["k1:9092", "k2:9092"]
topic = "from-file"
transactional_id = "file-id"
batch_size = 250
[bus.client_props]
"compression.type" = "lz4"
"transaction.timeout.ms" = 60000
"enable.idempotence" = true
[bus.consumer_props]
"isolation.level" = "read_committed"
""")
    cfg = load_bus_config(path, env={})
    assert cfg.bootstrap_servers == "k1:9092,k2:9092"
    assert (cfg.topic, cfg.transactional_id, cfg.batch_size) == ("from-file", "file-id", 250)
    assert cfg.client_props == {"compression.type": "lz4", "transaction.timeout.ms": "60000",
                                "enable.idempotence": "true"}
    assert cfg.mode is DeliveryMode.TRANSACTIONAL
    env = {"FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS": "env:9092", "FLEETFORGE_KAFKA_TOPIC": "from-env",
           "FLEETFORGE_KAFKA_TRANSACTIONAL_ID": "env-id", "FLEETFORGE_KAFKA_BATCH_SIZE": "7"}
    cfg = load_bus_config(path, env=env)
    assert (cfg.bootstrap_servers, cfg.topic, cfg.transactional_id, cfg.batch_size) == \
        ("env:9092", "from-env", "env-id", 7)
    assert "env (" in cfg.source


def test_defaults_without_a_file() -> None:
    cfg = load_bus_config(None, env={})
    assert cfg.topic == "fleetforge.events"
    assert cfg.mode is DeliveryMode.AT_LEAST_ONCE
    assert cfg.checkpoint_group_id == "fleetforge-forwarder.fleetforge.events.kafka-forwarder"


def test_transactional_id_in_client_props_counts(tmp_path: Path) -> None:
    path = write(tmp_path, '[bus]\nbootstrap_servers = "k:9092"\n[bus.client_props]\n"transactional.id" = "p-id"\n')
    cfg = load_bus_config(path, env={})
    assert cfg.transactional_id == "p-id" and "transactional.id" not in cfg.client_props
    conf, _ = cfg.producer_config()
    assert conf["transactional.id"] == "p-id"


def test_conflicting_transactional_ids_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[bus]\ntransactional_id = "a"\n[bus.client_props]\n"transactional.id" = "b"\n')
    with pytest.raises(ConfigError, match="differ"):
        load_bus_config(path, env={})


@pytest.mark.parametrize(("text", "match"), [
    ("[bus]\nbootstrap = 'k'\n", "unknown setting"),
    ("[bus]\nbatch_size = 0\n", "batch_size"),
    ("[bus]\nbatch_size = 'many'\n", "batch_size"),
    ("[bus]\ntopic = 3\n", "expected a string"),
    ("[bus]\n[bus.client_props]\nx = [1]\n", "client_props"),
    ("[other]\nx = 1\n", r"no \[bus\] table"),
    ("[bus\n", "not valid TOML"),
])
def test_bad_files_are_refused_with_the_key_and_fix(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_bus_config(write(tmp_path, text), env={})


def test_bad_env_values_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLEETFORGE_KAFKA_BATCH_SIZE"):
        load_bus_config(None, env={"FLEETFORGE_KAFKA_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_bus_config(tmp_path / "missing.toml", env={})


def test_producer_config_forces_idempotence_and_warns() -> None:
    cfg = BusConfig(bootstrap_servers="k:9092", client_props={
        "enable.idempotence": "false", "acks": "1", "max.in.flight.requests.per.connection": "20",
        "retries": "0", "compression.type": "zstd"})
    conf, warnings = cfg.producer_config()
    assert conf["enable.idempotence"] == "true" and conf["acks"] == "all"
    assert conf["max.in.flight.requests.per.connection"] == "5"
    assert "retries" not in conf and conf["compression.type"] == "zstd"
    assert len(warnings) == 4
    assert "transactional.id" not in conf


def test_producer_config_needs_bootstrap_servers() -> None:
    with pytest.raises(ConfigError, match="FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS"):
        BusConfig().producer_config()


def test_secrets_are_redacted() -> None:
    props = {"sasl.password": "hunter2", "sasl.username": "me", "ssl.key.password": "k",
             "sasl.oauthbearer.client.secret": "s"}
    shown = redact_props(props)
    assert shown == {"sasl.password": "***", "sasl.username": "me", "ssl.key.password": "***",
                     "sasl.oauthbearer.client.secret": "***"}
    assert "hunter2" not in json.dumps(BusConfig(client_props=props).summary())


def test_consumer_config_reads_committed_and_commits_by_hand() -> None:
    conf = consumer_config("k:9092", "sink", {"session.timeout.ms": "6000"})
    assert conf["isolation.level"] == "read_committed"
    assert conf["enable.auto.commit"] == "false" and conf["enable.auto.offset.store"] == "false"
    assert conf["session.timeout.ms"] == "6000" and conf["group.id"] == "sink"
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        consumer_config("k:9092", "sink", {"enable.auto.commit": "true"})


# -- commands ---------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_check_passes_only_for_a_sound_transactional_config(tmp_path: Path) -> None:
    good = write(tmp_path, '[bus]\nbootstrap_servers = "k:9092"\ntransactional_id = "fwd-1"\n')
    result = CliRunner().invoke(cli(), ["check-transactional-forwarder", "--config", str(good)], env={})
    assert result.exit_code == 0, result.output
    assert "transactional" in result.output

    result = CliRunner().invoke(cli(), ["check-transactional-forwarder"],
                                env={"FLEETFORGE_KAFKA_TRANSACTIONAL_ID": ""})
    assert result.exit_code == 1
    assert "transactional.id is not set" in result.output

    bad = write(tmp_path, '[bus]\ntransactional_id = "fwd-1"\n[bus.client_props]\nacks = "1"\n'
                          '[bus.consumer_props]\n"isolation.level" = "read_uncommitted"\n')
    result = CliRunner().invoke(cli(), ["check-transactional-forwarder", "--config", str(bad), "--json"], env={})
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["mode"] == "transactional" and report["transactional"] is False
    assert len(report["problems"]) == 2


def test_check_reports_a_missing_file_as_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["check-transactional-forwarder", "--config", str(tmp_path / "x.toml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_delivery_mode_prints_mode_and_settings(tmp_path: Path) -> None:
    path = write(tmp_path, '[bus]\nbootstrap_servers = "k:9092"\n[bus.client_props]\n"sasl.password" = "pw"\n')
    result = CliRunner().invoke(cli(), ["delivery-mode", "--config", str(path), "--json"], env={})
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["mode"] == "at-least-once" and summary["client_props"] == {"sasl.password": "***"}
    result = CliRunner().invoke(cli(), ["delivery-mode", "--config", str(path)],
                                env={"FLEETFORGE_KAFKA_TRANSACTIONAL_ID": "t1"})
    assert result.exit_code == 0 and "delivery mode: transactional" in result.output


def test_check_config_without_connecting() -> None:
    report = check_config(BusConfig(transactional_id="fwd-1"), connect=False)
    assert report["transactional"] is True and report["connected"] is False
    assert {c["check"] for c in report["checks"]} >= {"transactional.id detected", "idempotent producer"}
