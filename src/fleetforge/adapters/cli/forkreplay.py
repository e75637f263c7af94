"""`fleetforge runs fork` and `fleetforge runs replay` (see docs/runtime.md, "Fork and replay")."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fleetforge.adapters import operations
from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, die, guard, out, print_json
from fleetforge.adapters.cli.runs import prefix_guard, run_id_of, store_for_cli
from fleetforge.adapters.cli.wiring import tools_registry
from fleetforge.core.replay_report import EXIT_DRIFT, ReplayReport, Tolerance
from fleetforge.domain.money import MAX_TOKENS, MAX_USD

__all__ = ["register"]

_MAX_PATCH_BYTES = 1_048_576


def _patch_inputs(step: str, path: Path) -> dict[str, Any]:
    """The inputs in the JSON file `path`, for `--patch STEP FILE`; exits 2 when they cannot be read."""
    try:
        raw = path.read_bytes()[:_MAX_PATCH_BYTES + 1]
    except OSError as exc:
        die(f"--patch {step}: cannot read {str(path)!r}: {exc.strerror or exc}; pass a JSON file of step inputs", 2)
    if len(raw) > _MAX_PATCH_BYTES:
        die(f"--patch {step}: {str(path)!r} is over {_MAX_PATCH_BYTES} bytes; pass step inputs as a JSON object", 2)
    try:
        value = json.loads(raw)
    except ValueError as exc:
        die(f"--patch {step}: {str(path)!r} is not JSON ({exc}); pass step inputs as a JSON object", 2)
    if not isinstance(value, dict):
        die(f"--patch {step}: got {type(value).__name__} in {str(path)!r}, expected a JSON object of step inputs", 2)
    return value


def _print_report(report: ReplayReport) -> None:
    verdict = "[green]reproduced[/]" if report.reproduced else "[red]not reproduced[/]"
    out.print(f"[bold]{report.run_id}[/]  {verdict}  recorded {report.status_recorded}, "
              f"replayed {report.status_replayed or '-'}  calls answered from the record: {report.calls_answered}")
    table = Table("step", "recorded", "replayed", "attempts", "tokens Δ", "cost Δ", "differences")
    for s in report.steps:
        table.add_row(escape(s.step_id) + (" (reused)" if s.reused else ""), s.recorded or "-", s.replayed or "-",
                      f"{len(s.attempts_recorded)} / {len(s.attempts_replayed)}",
                      str(s.tokens_replayed - s.tokens_recorded),
                      f"{(s.cost_replayed_micros - s.cost_recorded_micros) / 1e6:+.6f}",
                      escape("; ".join(s.differences)) or "-")
    out.print(table)
    for line in [*report.differences, *report.calls_unrecorded]:
        out.print(f"[red]•[/] {escape(line)}", highlight=False)
    within = "[green]within[/]" if report.within_tolerance else "[red]outside[/]"
    out.print(f"drift: {report.token_drift:+d} tokens, {report.cost_drift_micros / 1e6:+.6f} USD, {within} "
              f"the tolerance ({report.tolerance.tokens} tokens, {report.tolerance.cost_usd:g} USD)")


def register(runs_app: typer.Typer) -> None:
    @runs_app.command("fork")
    def fork(
        run: Annotated[str, typer.Argument(help="The run to fork: its id, or a unique prefix of it.",
                                           show_default=False)],
        from_step: Annotated[str, typer.Option(
            "--from", show_default=False,
            help="The first step to execute again (it and every step after it run; the steps before reuse "
                 "their recorded results). An agent turn such as 'agent.t3' reuses the agent's earlier turns "
                 "and tool calls.")],
        patch: Annotated[tuple[str, Path] | None, typer.Option(
            "--patch", show_default=False, metavar="STEP FILE",
            help="Replace the inputs of STEP (a step the fork executes) with the JSON object in FILE, "
                 "validated as at submit.")] = None,
        actor: Annotated[str | None, typer.Option(
            "--as", envvar="FLEETFORGE_ACTOR", show_default=False,
            help="Who forks the run, recorded in the run_forked events (default: the OS user).")] = None,
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print {\"run_id\": ..., \"forked_from\": ...}.")]
            = False,
    ) -> None:
        """Create a new run from a recorded one: results before --from are reused (no call, no budget),
        --from and everything after it run again on the workers. Prints the new run id.

        Exit code 2 for bad input (an unknown step, a patch that fails validation, an ambiguous prefix),
        3 for an unknown run; nothing is stored then."""
        st = store_for_cli(store, data_dir)
        run_id = run_id_of(st, run)
        patches = {patch[0]: _patch_inputs(patch[0], patch[1])} if patch else None
        with guard():
            new_id = operations.fork(st, run_id, from_step, patch=patches, actor=actor or _user())
        if as_json:
            print_json({"run_id": new_id, "forked_from": run_id, "from_step": from_step})
        else:
            out.print(new_id)

    @runs_app.command("replay")
    def replay(
        run: Annotated[str, typer.Argument(help="The run to replay: its id, or a unique prefix of it.",
                                           show_default=False)],
        tolerance_tokens: Annotated[int, typer.Option(
            envvar="FLEETFORGE_REPLAY_TOLERANCE_TOKENS", min=0, max=MAX_TOKENS,
            help="Token drift (replayed minus recorded, over the run) accepted as reproduced.")] = 0,
        tolerance_cost_usd: Annotated[float, typer.Option(
            envvar="FLEETFORGE_REPLAY_TOLERANCE_COST_USD", min=0.0, max=MAX_USD,
            help="Cost drift in USD (replayed minus recorded, over the run) accepted as reproduced.")] = 0.0,
        tools: Annotated[list[str] | None, typer.Option(
            "--tools", envvar="FLEETFORGE_TOOLS", show_default=False,
            help="The worker's tool plugins ('module:function'), for their estimates; they are never called.")]
            = None,
        timeout_s: Annotated[float, typer.Option(
            "--timeout", envvar="FLEETFORGE_REPLAY_TIMEOUT_S", min=0.1,
            help="Stop a replay that has not finished after this many seconds (reported as drift).")] = 300.0,
        store: StoreOpt = None,
        data_dir: DataDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    ) -> None:
        """Execute a run again in a scratch store with every LLM, tool and HTTP result taken from its record
        (nothing external is called; the fleet's store and analytics are not touched) and report, step by
        step, whether the replay reproduced the record and how far tokens and cost drift.

        Exit code 0 when it reproduced the record within the tolerance, 5 otherwise; 2 for bad input or an
        ambiguous prefix, 3 for an unknown run."""
        st = store_for_cli(store, data_dir)
        run_id = run_id_of(st, run)
        with prefix_guard():
            registry = tools_registry(tools or ())
            report = asyncio.run(operations.replay(st, [run_id], tools=registry, timeout_s=timeout_s,
                                                   tolerance=Tolerance(tolerance_tokens, tolerance_cost_usd)))[0]
        if as_json:
            print_json(report.to_dict())
        else:
            _print_report(report)
        if not report.ok:
            raise typer.Exit(EXIT_DRIFT)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
