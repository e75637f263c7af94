"""`BusConfig`: where and how the forwarder publishes, from a TOML file (`[bus]`) and env vars.

Env vars override the file. The `transactional.id` comes from FLEETFORGE_KAFKA_TRANSACTIONAL_ID,
else `[bus] transactional_id`, else `[bus.client_props] "transactional.id"`.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from fleetforge.core.forwarding import REQUIRED_PRODUCER_PROPS, DeliveryMode, delivery_mode
from fleetforge.domain import envparse
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.secrets import redact_mapping

__all__ = ["DEFAULT_TOPIC", "ENV", "BusConfig", "load_bus_config", "redact_props"]

DEFAULT_TOPIC: Final = "fleetforge.events"

ENV: Final[dict[str, str]] = {
    "bootstrap_servers": "FLEETFORGE_KAFKA_BOOTSTRAP_SERVERS",
    "topic": "FLEETFORGE_KAFKA_TOPIC",
    "transactional_id": "FLEETFORGE_KAFKA_TRANSACTIONAL_ID",
    "batch_size": "FLEETFORGE_KAFKA_BATCH_SIZE",
    "linger_ms": "FLEETFORGE_KAFKA_LINGER_MS",
    "instance_id": "FLEETFORGE_FORWARDER_ID",
    "outbox_consumer": "FLEETFORGE_FORWARDER_CONSUMER",
}
"""Env var of each setting that has one."""

_INTS: Final = {
    "batch_size": (1, 100_000), "linger_ms": (0, 60_000), "lease_ttl_ms": (1_000, 600_000),
    "poll_interval_ms": (1, 60_000), "call_timeout_ms": (100, 600_000), "topic_partitions": (1, 10_000),
    "max_in_flight": (1, 1_000_000),
}
_STRS: Final = ("bootstrap_servers", "topic", "transactional_id", "outbox_consumer", "instance_id",
                "checkpoint_group")
_TABLES: Final = ("client_props", "consumer_props")
_MAX_IN_FLIGHT_IDEMPOTENT: Final = 5


@dataclass(frozen=True, slots=True)
class BusConfig:
    """Bus settings. `client_props` pass through to librdkafka (minus `transactional.id`, kept apart)."""

    bootstrap_servers: str = ""
    topic: str = DEFAULT_TOPIC
    transactional_id: str | None = None
    client_props: dict[str, str] = field(default_factory=dict)
    consumer_props: dict[str, str] = field(default_factory=dict)
    batch_size: int = 1_000  # outbox rows per read and per transaction
    linger_ms: int = 5
    max_in_flight: int = 10_000  # at-least-once: rows sent before waiting for the acknowledgements
    outbox_consumer: str = "kafka-forwarder"  # the outbox cursor name, and the lease name
    instance_id: str | None = None  # lease holder; default: the transactional.id, else host-pid
    lease_ttl_ms: int = 15_000
    poll_interval_ms: int = 100
    call_timeout_ms: int = 30_000  # bound of each blocking transactional call (init, commit, abort)
    topic_partitions: int = 6  # used only when the forwarder creates the topic
    create_topic: bool = True
    checkpoint_group: str | None = None
    source: str = "defaults"  # where the settings came from, for messages

    @property
    def mode(self) -> DeliveryMode:
        return delivery_mode(self.transactional_id)

    @property
    def holder(self) -> str:
        """The lease holder id of this forwarder instance."""
        return self.instance_id or self.transactional_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def checkpoint_group_id(self) -> str:
        """Consumer group whose committed offset records, transactionally, the last published row."""
        return self.checkpoint_group or f"fleetforge-forwarder.{self.topic}.{self.outbox_consumer}"

    def connection_config(self) -> dict[str, str]:
        """Bootstrap servers plus the security settings of `client_props`, for admin and helper clients."""
        conf = {k: v for k, v in self.client_props.items()
                if k.startswith(("security.", "sasl.", "ssl.", "client.", "socket.", "broker.address"))}
        conf["bootstrap.servers"] = self.bootstrap_servers
        return conf

    def configured_producer_props(self) -> dict[str, str]:
        """The producer settings as the operator gave them, `transactional.id` included (for checks)."""
        props = dict(self.client_props)
        if self.transactional_id:
            props["transactional.id"] = self.transactional_id
        return props

    def producer_config(self) -> tuple[dict[str, str], list[str]]:
        """(librdkafka producer config, warnings about settings the forwarder had to override)."""
        if not self.bootstrap_servers:
            raise ConfigError(
                f"bootstrap_servers is not set ({self.source}): set [bus] bootstrap_servers in the config "
                f"file or {ENV['bootstrap_servers']}")
        warnings: list[str] = []
        conf = {"linger.ms": str(self.linger_ms), **self.client_props}
        for key, value in REQUIRED_PRODUCER_PROPS.items():
            given = conf.get(key)
            if given is not None and given.strip().lower() not in {value, "-1" if key == "acks" else value}:
                warnings.append(f"client_props {key}={given!r} overridden to {value!r} (idempotence needs it)")
            conf[key] = value
        conf.pop("request.required.acks", None)
        for key in ("max.in.flight.requests.per.connection", "max.in.flight"):
            if key in conf and _as_int(conf[key], 0) > _MAX_IN_FLIGHT_IDEMPOTENT:
                warnings.append(f"client_props {key}={conf[key]!r} lowered to {_MAX_IN_FLIGHT_IDEMPOTENT}")
                conf[key] = str(_MAX_IN_FLIGHT_IDEMPOTENT)
        for key in ("retries", "message.send.max.retries"):
            if key in conf and _as_int(conf[key], 1) == 0:
                warnings.append(f"client_props {key}=0 removed (idempotence needs retries)")
                del conf[key]
        conf["bootstrap.servers"] = self.bootstrap_servers
        if self.transactional_id:
            conf["transactional.id"] = self.transactional_id
        return conf, warnings

    def summary(self) -> dict[str, Any]:
        """Every effective setting, secrets redacted (for `fleetforge delivery-mode`)."""
        return {
            "mode": str(self.mode),
            "source": self.source,
            "bootstrap_servers": self.bootstrap_servers,
            "topic": self.topic,
            "transactional_id": self.transactional_id,
            "outbox_consumer": self.outbox_consumer,
            "instance_id": self.holder,
            "checkpoint_group": self.checkpoint_group_id if self.transactional_id else None,
            "batch_size": self.batch_size,
            "linger_ms": self.linger_ms,
            "max_in_flight": self.max_in_flight,
            "lease_ttl_ms": self.lease_ttl_ms,
            "poll_interval_ms": self.poll_interval_ms,
            "call_timeout_ms": self.call_timeout_ms,
            "create_topic": self.create_topic,
            "topic_partitions": self.topic_partitions,
            "client_props": redact_props(self.client_props),
            "consumer_props": redact_props(self.consumer_props),
        }


def redact_props(props: Mapping[str, str]) -> dict[str, str]:
    """`props` with the values of secret-looking keys replaced by '***'."""
    return redact_mapping(props)


def load_bus_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> BusConfig:
    """Read the `[bus]` table of the TOML file at `path` (optional), then apply env overrides.

    Raises ConfigError naming the file, the key and the fix for anything it cannot use.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None and str(path):
        values = _read_file(Path(path))
        source = str(path)
    tables = {name: _props(values.pop(name, {}), f"{source}: [bus.{name}]") for name in _TABLES}
    config_id = values.pop("transactional_id", None)
    props_id = tables["client_props"].pop("transactional.id", None)
    if config_id and props_id and config_id != props_id:
        raise ConfigError(
            f"{source}: [bus] transactional_id = {config_id!r} and [bus.client_props] \"transactional.id\" = "
            f"{props_id!r} differ; keep one of them")
    kwargs: dict[str, Any] = {"source": source, **tables, **values}
    kwargs["transactional_id"] = config_id or props_id
    used_env = []
    for name, var in ENV.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        used_env.append(var)
        kwargs[name] = _coerce(name, raw.strip(), var)
    if used_env:
        kwargs["source"] = f"{source} + env ({', '.join(used_env)})"
    config = BusConfig(**kwargs)
    if not config.transactional_id:
        config = replace(config, transactional_id=None)
    if not config.topic:
        raise ConfigError(f"topic is empty ({config.source}): set [bus] topic or {ENV['topic']}")
    return config


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a TOML file with a [bus] table "
                          "(see deploy/kafka/forwarder.toml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    bus = data.get("bus")
    if not isinstance(bus, dict):
        raise ConfigError(f"{path}: no [bus] table; add one with bootstrap_servers, topic and, for "
                          "transactions, transactional_id")
    out: dict[str, Any] = {}
    for key, value in bus.items():
        where = f"{path}: [bus] {key}"
        if key in _TABLES:
            out[key] = value
        elif key in _STRS:
            if key == "bootstrap_servers" and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            if not isinstance(value, str):
                raise ConfigError(f"{where}: got {value!r}, expected a string")
            out[key] = value.strip()
        elif key in _INTS:
            out[key] = _check_int(value, key, where)
        elif key == "create_topic":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: got {value!r}, expected true or false")
            out[key] = value
        else:
            known = ", ".join(sorted((*_STRS, *_INTS, *_TABLES, "create_topic")))
            raise ConfigError(f"{where}: unknown setting; known settings are {known}")
    return out


def _props(table: Any, where: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: got {table!r}, expected a table of librdkafka properties")
    out: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[key] = str(value)
        else:
            raise ConfigError(f"{where} {key}: got {value!r}, expected a string, number or boolean")
    return out


def _coerce(name: str, raw: str, var: str) -> str | int:
    if name in _INTS:
        low, high = _INTS[name]
        return envparse.integer(raw, var, lo=low, hi=high)
    return raw


def _check_int(value: Any, name: str, where: str) -> int:
    low, high = _INTS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: got {value!r}, expected a whole number from {low} to {high}")
    return value


def _as_int(text: str, default: int) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return default
