"""Open a state store from a URL: `sqlite:///file.db`, a bare path, or `postgresql://...`."""

from __future__ import annotations

from pathlib import Path

from fleetforge.domain.errors import ConfigError
from fleetforge.domain.secrets import redact_url
from fleetforge.ports.clock import Clock
from fleetforge.ports.store import Store

__all__ = ["open_store"]

ACCEPTED = (
    "sqlite:///relative/file.db, sqlite:////absolute/file.db, a bare file path, "
    "or postgresql://user@host:port/dbname (postgres:// also accepted)"
)


def open_store(url: str, *, clock: Clock | None = None) -> Store:
    """The store `url` names. SQLite URLs follow SQLAlchemy: three slashes, then the path.

    Raises ConfigError naming the value and the accepted forms when `url` is not one of them.
    """
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        if not text or text == ":memory:":
            raise ConfigError(f"store URL: got {url!r}, expected {ACCEPTED}")
        return _sqlite(Path(text).expanduser(), clock)
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path == ":memory:" or "?" in path:
            raise ConfigError(f"store URL: got {url!r}, expected {ACCEPTED}")
        return _sqlite(Path(path).expanduser(), clock)
    if scheme in {"postgresql", "postgres"}:
        from fleetforge.adapters.stores.postgres.store import PostgresStore

        return PostgresStore(text, clock=clock)
    raise ConfigError(f"store URL: got {redact_url(url)!r}, expected {ACCEPTED}")


def _sqlite(path: Path, clock: Clock | None) -> Store:
    from fleetforge.adapters.stores.sqlite.store import SqliteStore

    return SqliteStore(path, clock=clock)

