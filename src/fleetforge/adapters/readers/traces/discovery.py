"""Which trace exporters run: FLEETFORGE_TRACE_EXPORTERS, plugin manifests and credentials from env.

An exporter is active only when it is named in FLEETFORGE_TRACE_EXPORTERS, a manifest
`<plugins dir>/exporters/<name>.toml` containing `name = "<name>"` exists (and does not say
`enabled = false`), and its credentials and endpoint are valid. Every other case is reported once,
with the reason, and the exporter stays off while everything else runs.
"""

from __future__ import annotations

import ipaddress
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from fleetforge.adapters.readers.traces.platform_registry import PLATFORMS, known
from fleetforge.adapters.readers.traces.platform_spec import Delivery, ExporterConfig, PlatformSpec
from fleetforge.domain.secrets import redact_url

__all__ = [
    "DEFAULT_PLUGINS_DIR",
    "KNOWN",
    "Delivery",
    "Discovery",
    "ExporterConfig",
    "Skipped",
    "check_url",
    "discover",
]

KNOWN: Final = tuple(sorted(PLATFORMS))
DEFAULT_PLUGINS_DIR: Final = Path("plugins")
ENV_EXPORTERS: Final = "FLEETFORGE_TRACE_EXPORTERS"
ENV_PLUGINS_DIR: Final = "FLEETFORGE_PLUGINS_DIR"
_DELIVERY_KEYS: Final[dict[str, type]] = {
    "batch_size": int, "flush_interval_ms": int, "queue_size": int, "timeout_s": float,
    "max_backoff_s": float, "poll_interval_ms": int, "read_batch": int, "max_open_runs": int,
}
_DELIVERY_MAX: Final[dict[str, float]] = {  # sane upper bounds: memory, request and wait times
    "batch_size": 10_000, "flush_interval_ms": 3_600_000, "queue_size": 1_000_000, "timeout_s": 600.0,
    "max_backoff_s": 3_600.0, "poll_interval_ms": 60_000, "read_batch": 100_000, "max_open_runs": 1_000_000,
}
_TOP_KEYS: Final = ("name", "enabled", "delivery", "options")

log = logging.getLogger("fleetforge.exporters")


@dataclass(frozen=True, slots=True)
class Skipped:
    """A requested (or disabled) exporter that stays off, and why."""

    name: str
    reason: str
    warning: bool = True


@dataclass(frozen=True, slots=True)
class Discovery:
    """The outcome of reading FLEETFORGE_TRACE_EXPORTERS, the manifests and the credentials."""

    requested: tuple[str, ...]
    plugins_dir: Path
    active: tuple[ExporterConfig, ...]
    skipped: tuple[Skipped, ...]

    @property
    def summary(self) -> str:
        if not self.requested:
            return (f"{ENV_EXPORTERS} is not set: no trace exporter runs; the OpenTelemetry collector "
                    "(OTEL_EXPORTER_OTLP_ENDPOINT) stays the default trace destination")
        on = ", ".join(c.name for c in self.active) or "none"
        return f"trace exporters requested: {', '.join(self.requested)}; active: {on}"

    def report(self, logger: logging.Logger = log) -> None:
        """Log why each requested exporter is off: one line each (warning, or info when disabled)."""
        for s in self.skipped:
            logger.log(logging.WARNING if s.warning else logging.INFO, "%s", s.reason)
        if self.active:
            logger.info("%s", self.summary)


def discover(env: Mapping[str, str], plugins_dir: Path | None = None) -> Discovery:
    """Decide which exporters run, from `env` and the manifests under the plugins dir."""
    folder = plugins_dir or Path(env.get(ENV_PLUGINS_DIR) or DEFAULT_PLUGINS_DIR)
    raw = env.get(ENV_EXPORTERS, "")
    requested = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    active: list[ExporterConfig] = []
    skipped: list[Skipped] = []
    for name in requested:
        spec = PLATFORMS.get(name)
        if spec is None:
            skipped.append(Skipped(name, f"trace exporter {name!r} named in {ENV_EXPORTERS} is unknown "
                                         f"(known: {known()}); it stays off"))
            continue
        result = _configure(spec, folder, env)
        if isinstance(result, Skipped):
            skipped.append(result)
        else:
            active.append(result)
    return Discovery(requested, folder, tuple(active), tuple(skipped))


def _configure(spec: PlatformSpec, folder: Path, env: Mapping[str, str]) -> ExporterConfig | Skipped:
    name = spec.name
    path = folder / "exporters" / f"{name}.toml"
    if not path.is_file():
        return Skipped(name, f"trace exporter {name!r} is requested but has no manifest at {path}: it stays off "
                             f"and the OpenTelemetry collector remains the default. To enable it, create that "
                             f"file containing name = \"{name}\" (examples ship in plugins/exporters/)")
    try:
        manifest = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return Skipped(name, f"trace exporter manifest {path} is malformed ({exc}); exporter {name!r} stays off")
    problem = _manifest_problem(spec, manifest)
    if problem is not None:
        return Skipped(name, f"trace exporter manifest {path} is malformed: {problem}; exporter {name!r} stays off")
    if manifest.get("enabled", True) is False:
        return Skipped(name, f"trace exporter {name!r} is disabled by {path} (enabled = false)", warning=False)
    delivery = Delivery(**{k: _DELIVERY_KEYS[k](v) for k, v in (manifest.get("delivery") or {}).items()})
    options = {k: str(v) for k, v in (manifest.get("options") or {}).items()}
    return _credentials(spec, path, env, options, delivery)


def _manifest_problem(spec: PlatformSpec, m: dict[str, Any]) -> str | None:
    name = spec.name
    unknown = sorted(set(m) - set(_TOP_KEYS))
    if unknown:
        return f"unknown key {unknown[0]!r}, expected keys among {', '.join(_TOP_KEYS)}"
    if m.get("name") != name:
        return f"got name = {m.get('name')!r}, expected name = \"{name}\""
    if not isinstance(m.get("enabled", True), bool):
        return f"got enabled = {m.get('enabled')!r}, expected true or false"
    for table, schema in (("delivery", _DELIVERY_KEYS), ("options", spec.options)):
        value = m.get(table, {})
        if not isinstance(value, dict):
            return f"got {table} = {value!r}, expected a [{table}] table"
        for key, v in value.items():
            kind = schema.get(key)
            if kind is None:
                accepted = ", ".join(schema) or "none"
                return f"unknown key {table}.{key}, expected one of {accepted}"
            if kind is str:
                if not isinstance(v, str):
                    return f"got {table}.{key} = {v!r}, expected a string"
                continue
            hi = _DELIVERY_MAX.get(key, 2.0**53)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= hi \
                and (kind is float or v == int(v))  # NaN and infinities fail the bounds
            if not ok:
                whole = "whole " if kind is int else ""
                return f"got {table}.{key} = {v!r}, expected a positive {whole}number <= {hi:.0f}"
    return spec.check_options(m.get("options", {})) if spec.check_options is not None else None


def check_url(var: str, value: str) -> str:
    """`value` without a trailing slash when it is https:// (or http:// to a loopback host).

    Raises ValueError naming `var`, the value (credentials hidden) and what is accepted.
    """
    parts = urlsplit(value.strip())
    shown = redact_url(value)
    expected = "an https:// URL (plain http:// only for loopback hosts) without user:password, query or fragment"
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        raise ValueError(f"{var}: got {shown!r}, expected {expected}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(f"{var}: got {shown!r}, expected {expected}; {parts.hostname} is not a loopback host")
    return value.strip().rstrip("/")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(spec: PlatformSpec, path: Path, env: Mapping[str, str], options: dict[str, str],
                 delivery: Delivery) -> ExporterConfig | Skipped:
    name = spec.name
    try:
        base_url = check_url(spec.url_var, env.get(spec.url_var) or spec.default_url)
    except ValueError as exc:
        return Skipped(name, f"trace exporter {name!r}: {exc}; it stays off")
    creds = spec.credentials(env, options, _loopback(urlsplit(base_url).hostname or ""))
    if isinstance(creds, str):
        return Skipped(name, f"trace exporter {name!r}{creds}; it stays off")
    return ExporterConfig(name, path, base_url, options, delivery, creds.headers, creds.secrets)
