"""`fleetforge runs list` printing, id prefixes, and `fleetforge runs tail`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import typer
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table

from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, guard, out
from fleetforge.adapters.cli.wiring import store_for
from fleetforge.core.runs import AmbiguousRunId, follow_run, resolve_run_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.models import RunRow, RunStatus
from fleetforge.ports.store import Store

__all__ = ["EXIT_CANCELED", "EXIT_FAILED", "EXIT_INTERRUPTED", "print_runs", "register", "run_id_of"]

EXIT_FAILED: Final = 1
EXIT_CANCELED: Final = 4
EXIT_INTERRUPTED: Final = 130

_HIDDEN: Final = frozenset({"step_type", "slo_tier", "labels", "raw", "attributes"})
_SUMMARY_CHARS: Final = 100


def ts(us: int | None) -> str:
    """Microseconds since the epoch as 'YYYY-MM-DD HH:MM:SS' UTC; '' for None."""
    return "" if us is None else datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def prefix_guard() -> Iterator[None]:
    """`guard()`, and an ambiguous id prefix is bad input (exit 2) listing the candidates."""
    with guard():
        try:
            yield
        except AmbiguousRunId as exc:
            die(str(exc), 2)


def run_id_of(store: Store, text: str) -> str:
    """The full id of the run `text` names (a full id or a unique prefix); exits 2 or 3 otherwise."""
    with prefix_guard():
        return resolve_run_id(store, text)


def print_runs(rows: Sequence[RunRow]) -> None:
    """A table when the terminal is wide enough for every id unbroken (all columns, else the main ones);
    on a narrower one, each run as the id alone on its line and the rest indented below it."""
    full = _table(("run id", "workspace", "app", "status", "created", "finished", "error"),
                  [(r.id, r.workspace, r.app, str(r.status), ts(r.created_us), ts(r.finished_us), r.error_kind)
                   for r in rows])
    compact = _table(("run id", "app", "status", "created"),
                     [(r.id, f"{r.workspace}/{r.app}", str(r.status), ts(r.created_us)) for r in rows])
    for table in (full, compact):
        if Measurement.get(out, out.options.update_width(1_000_000), table).maximum <= out.width:
            out.print(table)
            return
    for r in rows:
        out.print(escape(r.id), highlight=False)
        details = [f"{r.workspace}/{r.app}", str(r.status), ts(r.created_us), r.error_kind]
        out.print(Padding(escape("  ".join(filter(None, details))), (0, 0, 0, 2), expand=False), highlight=False,
                  soft_wrap=False)  # the details may wrap; the id never does


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(*header)
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    return table


def _summary(payload: dict[str, Any]) -> str:
    parts = []
    for key, value in payload.items():
        if key in _HIDDEN or value in ("", 0, 0.0, None, False, [], {}):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= _SUMMARY_CHARS else line[: _SUMMARY_CHARS - 1] + "…"


def _event_line(env: Envelope) -> str:
    when = datetime.fromtimestamp(env.occurred_us / 1e6, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    where = f"{env.step_id}#{env.attempt}" if env.step_id else "-"
    return f"{when}  {env.kind!s:<22} {where:<20} {_summary(env.payload)}"


def register(runs_app: typer.Typer) -> None:
    @runs_app.command("tail")
    def tail(
        run: Annotated[str, typer.Argument(help="The run id, or a unique prefix of it.", show_default=False)],
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print each event as one line of envelope JSON, "
                                                            "as stored in the outbox.")] = False,
        poll_ms: Annotated[int, typer.Option(envvar="FLEETFORGE_TAIL_POLL_MS", min=1, max=60_000,
                                             help="Wait between reads of the outbox when nothing is new, "
                                                  "in milliseconds.")] = 200,
    ) -> None:
        """Print a run's events as they commit (from its first one still in the outbox) until the run ends.

        Each line: time (UTC), kind, step#attempt, short payload. Exit code: 0 when the run succeeded,
        1 when it failed, 4 when it was canceled, 130 when interrupted (Ctrl-C); 2 for an ambiguous
        prefix, 3 for an unknown run.
        """
        st = store_for_cli(store, data_dir)
        run_id = run_id_of(st, run)
        try:
            with prefix_guard():
                for env in follow_run(st, run_id, poll_s=poll_ms / 1000):
                    if as_json:
                        out.file.write(env.to_json() + "\n")
                        out.file.flush()
                    else:
                        out.print(escape(_event_line(env)), highlight=False)
                final = st.get_run(run_id)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        status = final.status if final is not None else RunStatus.FAILED
        if status is RunStatus.SUCCEEDED:
            return
        raise typer.Exit(EXIT_CANCELED if status is RunStatus.CANCELED else EXIT_FAILED)


def store_for_cli(store: str | None, data_dir: Any) -> Store:
    """`store_for` with FleetForge errors turned into exit codes."""
    with guard():
        return store_for(store, data_dir)
