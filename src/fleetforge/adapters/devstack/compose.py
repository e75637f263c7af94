"""The compose stack: `docker compose -f deploy/compose/docker-compose.yaml up -d | down | ps`, used when a
Docker engine answers `docker info`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

from fleetforge.domain.errors import ConfigError

__all__ = ["ENV_FILE", "compose", "compose_file", "docker_available"]

ENV_FILE: Final = "FLEETFORGE_COMPOSE_FILE"


def docker_available(timeout_s: float = 10.0) -> bool:
    """True when a `docker` client is installed and its engine answers."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def compose_file(explicit: Path | None = None) -> Path:
    """The compose file: `explicit`, FLEETFORGE_COMPOSE_FILE, this checkout's or the installed copy."""
    here = Path(__file__).resolve()
    tried = [p for p in (explicit, Path(os.environ[ENV_FILE]) if os.environ.get(ENV_FILE) else None) if p]
    tried += [
        here.parents[4] / "deploy" / "compose" / "docker-compose.yaml",
        Path(sys.prefix) / "share" / "fleetforge" / "compose" / "docker-compose.yaml",
    ]
    for path in tried:
        if path.is_file():
            return path
    raise ConfigError(
        "cannot find deploy/compose/docker-compose.yaml: looked in "
        + ", ".join(map(str, tried))
        + f"; pass --compose-file or set {ENV_FILE}"
    )


def compose(file: Path, *args: str) -> int:
    """Run `docker compose -f FILE ARGS...` in the foreground; its exit code."""
    return subprocess.run(["docker", "compose", "-f", str(file), *args], check=False).returncode
