"""Options and output helpers shared by every command."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fleetforge.domain.errors import ConfigError, FleetForgeError, NotFoundError, SpecError

__all__ = ["DataDirOpt", "StoreOpt", "call", "die", "err", "guard", "out", "print_json"]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", envvar="FLEETFORGE_STORE_URL", show_default=False,
                 help="State store URL: sqlite:///path.db or postgresql://user@host/db. "
                      "Default: the SQLite store under --data-dir."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="FLEETFORGE_DATA_DIR", show_default=False,
                 help="Folder of the embedded stores (SQLite state, chDB analytics). Default: ./.fleetforge"),
]


def die(message: str, code: int = 1) -> NoReturn:
    """Print an error to stderr and exit with `code`."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def guard() -> Iterator[None]:
    """Turn FleetForge errors into a clear message and a non-zero exit code (2 for bad input)."""
    try:
        yield
    except (SpecError, ConfigError) as exc:
        die(str(exc), 2)
    except NotFoundError as exc:
        die(str(exc), 3)
    except FleetForgeError as exc:
        die(str(exc), 1)


def print_json(value: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=None, separators=(",", ":"), sort_keys=False) + "\n")
    sys.stdout.flush()


def call(fn: Callable[[], T]) -> T:
    with guard():
        return fn()
