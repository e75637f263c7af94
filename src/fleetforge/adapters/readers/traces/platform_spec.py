"""What a trace platform declares (`PlatformSpec`) and the configuration of one active exporter.

A platform is one module defining a `SPEC` plus one line in `registry.PLATFORMS`: its env vars, its
default endpoint, its manifest `[options]`, how credentials become headers, and its encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleetforge.adapters.readers.traces.delivery import Request
from fleetforge.core.exporting import TraceSpan

__all__ = ["Credentials", "Delivery", "ExporterConfig", "Platform", "PlatformSpec", "missing"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one exporter batches, retries and reads (the manifest's `[delivery]` table)."""

    batch_size: int = 100  # spans per request
    flush_interval_ms: int = 2_000  # a partial batch waits at most this long
    queue_size: int = 1_000  # finished spans (grouped per attempt or run) waiting for the sender
    timeout_s: float = 10.0  # per HTTP request
    max_backoff_s: float = 30.0  # retry delay cap (a longer Retry-After is honoured up to 300 s)
    poll_interval_ms: int = 500  # outbox poll when caught up
    read_batch: int = 500  # outbox rows per read
    max_open_runs: int = 10_000  # runs buffered while their spans are incomplete


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """One active exporter: endpoint, auth headers (secret: never printed), options, delivery."""

    name: str
    manifest: Path
    base_url: str
    options: Mapping[str, str]
    delivery: Delivery
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)
    secrets: tuple[str, ...] = field(repr=False, default=())

    @property
    def consumer(self) -> str:
        """The outbox cursor name of this exporter."""
        return f"exporter-{self.name}"


class Platform(Protocol):
    """How one platform wants spans: one request per batch, plus optional set-up requests."""

    name: str

    def prepare(self) -> list[Request]:
        """Requests sent once before the first batch (may be empty)."""
        ...

    def encode(self, spans: Sequence[TraceSpan]) -> Request:
        """One request delivering `spans`."""
        ...

    def problem(self, body: bytes) -> str | None:
        """A warning about a 2xx answer (e.g. spans rejected in part), or None."""
        ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """Auth headers, and the values that must never appear in a log line."""

    headers: dict[str, str]
    secrets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    """One trace platform: its env vars, defaults, manifest options and encoder.

    `credentials(env, options, loopback)` reads the platform's env vars (it may add to `options`) and
    returns the headers, or the reason it cannot run, phrased to follow "trace exporter '<name>'"
    (e.g. " needs X in the environment (not set)"). `check_options` names a problem with the
    manifest's `[options]` values beyond their types, or None.
    """

    name: str
    url_var: str
    default_url: str
    env: tuple[str, ...]
    options: Mapping[str, type]
    credentials: Callable[[Mapping[str, str], dict[str, str], bool], Credentials | str]
    encoder: Callable[[ExporterConfig], Platform]
    check_options: Callable[[Mapping[str, Any]], str | None] | None = None


def missing(*names: str) -> str:
    """The reason for env vars that are not set."""
    return f" needs {' and '.join(names)} in the environment (not set)"
