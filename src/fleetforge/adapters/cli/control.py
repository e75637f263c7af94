"""`fleetforge runs approve|deny|pause|resume`: the operator commands over core/control.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer

from fleetforge.adapters.cli import runs
from fleetforge.adapters.cli.common import DataDirOpt, StoreOpt, guard, out
from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.core import control
from fleetforge.core.runtime import Runtime
from fleetforge.domain.errors import SpecError
from fleetforge.domain.spec import MAX_SPEC_BYTES
from fleetforge.ports.store import Store

__all__ = ["register"]

T = TypeVar("T")

RunArg = Annotated[str, typer.Argument(help="The run id, or a unique prefix of it (like git).", show_default=False)]
StepArg = Annotated[str, typer.Argument(help="The step id (or an agent's tool call, e.g. agent.t2.ccall_1).",
                                        show_default=False)]
ActorOpt = Annotated[str | None, typer.Option("--as", envvar="FLEETFORGE_ACTOR", show_default=False,
                                              help="Who acts, as recorded in the events (default: the OS user).")]


def _with_runtime(st: Store, fn: Callable[[Runtime], T]) -> T:
    async def go() -> T:
        async with httpx.AsyncClient() as client:
            return fn(build_runtime(st, client))

    with guard():
        return asyncio.run(go())


def _patch_inputs(step: str, path: Path) -> dict[str, Any]:
    """The inputs a `--patch STEP FILE` gives (a JSON object)."""
    try:
        raw = path.read_bytes()[:MAX_SPEC_BYTES + 1]
    except OSError as exc:
        raise SpecError([f"--patch {step} {path}: cannot read the file ({exc.strerror or exc})"]) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SpecError([f"--patch {step} {path}: got invalid JSON ({exc}), expected a JSON object of step "
                         "inputs"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"--patch {step} {path}: got {type(data).__name__}, expected a JSON object of step "
                         "inputs"])
    return data


def register(runs_app: typer.Typer) -> None:
    @runs_app.command("approve")
    def approve(run: RunArg, step: StepArg, store: StoreOpt = None, data_dir: DataDirOpt = None,
                reason: Annotated[str | None, typer.Option(help="Why, recorded with the approval.")] = None,
                actor: ActorOpt = None) -> None:
        """Approve a step (or an agent's tool call) waiting for approval: it is queued and runs.

        Exit code 1 when the run or step is not in a state for it, 2 for bad input or an ambiguous
        prefix, 3 for an unknown run or step."""
        st = runs.store_for_cli(store, data_dir)
        run_id = runs.run_id_of(st, run)
        _with_runtime(st, lambda rt: control.approve(rt, run_id, step, reason=reason, actor=actor))
        out.print(f"approved {step} of {run_id}", highlight=False)

    @runs_app.command("deny")
    def deny(run: RunArg, step: StepArg,
             reason: Annotated[str, typer.Option(help="Why (required), recorded and given as the failure.",
                                                 show_default=False)],
             store: StoreOpt = None, data_dir: DataDirOpt = None, actor: ActorOpt = None) -> None:
        """Deny a step waiting for approval: it fails its run with the reason (an agent's tool call is
        answered to the model as a tool error instead).

        Exit code 1 when the run or step is not in a state for it, 2 for bad input or an ambiguous
        prefix, 3 for an unknown run or step."""
        st = runs.store_for_cli(store, data_dir)
        run_id = runs.run_id_of(st, run)
        _with_runtime(st, lambda rt: control.deny(rt, run_id, step, reason, actor=actor))
        out.print(f"denied {step} of {run_id}", highlight=False)

    @runs_app.command("pause")
    def pause(run: RunArg, store: StoreOpt = None, data_dir: DataDirOpt = None, actor: ActorOpt = None) -> None:
        """Pause a run: no new step starts until `runs resume`; running attempts finish.

        Exit code 1 when the run already ended, 2 for an ambiguous prefix, 3 for an unknown run."""
        st = runs.store_for_cli(store, data_dir)
        run_id = runs.run_id_of(st, run)
        changed = _with_runtime(st, lambda rt: control.pause(rt, run_id, actor=actor))
        out.print(f"paused {run_id}" if changed else f"{run_id} was already paused", highlight=False)

    @runs_app.command("resume")
    def resume(run: RunArg, store: StoreOpt = None, data_dir: DataDirOpt = None, actor: ActorOpt = None,
               patch: Annotated[tuple[str, Path] | None, typer.Option(
                   "--patch", metavar="STEP FILE", show_default=False,
                   help="Replace the inputs of STEP (not started yet) with those in FILE, a JSON object, "
                        "validated as at submit.")] = None) -> None:
        """Resume a paused run, optionally with patched inputs for a step (recorded as a step_patched event).

        Exit code 1 when the run is not paused, 2 for bad input (nothing is changed) or an ambiguous
        prefix, 3 for an unknown run."""
        st = runs.store_for_cli(store, data_dir)
        run_id = runs.run_id_of(st, run)
        patches: dict[str, Any] = {}
        if patch is not None:
            with guard():
                patches[patch[0]] = _patch_inputs(*patch)
        done = _with_runtime(st, lambda rt: control.resume(rt, run_id, patches=patches, actor=actor))
        out.print(f"resumed {run_id}" + (f" (patched: {', '.join(done)})" if done else ""), highlight=False)
