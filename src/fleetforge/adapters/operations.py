"""Fork and replay wired to real parts, for the command line, the Python client and the HTTP API.

`fork` stores the fork in the given store. `replay` never writes to it: each replay runs in a scratch
SQLite store in a temporary folder, deleted afterwards, with an HTTP client whose transport refuses
every request, so nothing external can be called even by mistake (see docs/runtime.md, "Fork and replay").
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.cli.wiring import build_runtime, config_from_env
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.fork import fork_run
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.replay import load_record, replay_runs
from fleetforge.core.replay_report import ReplayReport, Tolerance
from fleetforge.core.runtime import Runtime
from fleetforge.ports.store import Store

__all__ = ["NoNetwork", "fork", "replay"]


class NoNetwork(httpx.AsyncBaseTransport):
    """An httpx transport that refuses every request (a replay sends none)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("replay: no request may leave a replay", request=request)


def fork(store: Store, run_id: str, from_step: str, *, patch: Mapping[str, Any] | None = None,
         actor: str = "") -> str:
    """Store a fork of `run_id` from `from_step` (see core.fork.fork_run); the new run's id.

    A fork executes nothing itself (workers run it), so its runtime needs no executor."""
    runtime = Runtime(store, executors={}, packs=default_packs(), config=config_from_env())
    return fork_run(runtime, run_id, from_step, patch=patch, actor=actor)


async def replay(store: Store, run_ids: Sequence[str], *, tolerance: Tolerance = Tolerance(),
                 tools: ToolRegistry | None = None, prices: PriceTable | None = None,
                 timeout_s: float = 300.0) -> list[ReplayReport]:
    """Replay the runs `run_ids` of `store` in a scratch store; one report per run, in order (`prices`:
    price the recorded LLM tokens with these, see core.replay.replay_runs)."""
    records = [load_record(store, rid) for rid in run_ids]
    with tempfile.TemporaryDirectory(prefix="fleetforge-replay-") as folder:
        scratch = SqliteStore(Path(folder) / "replay.db")
        try:
            scratch.migrate()
            async with httpx.AsyncClient(transport=NoNetwork()) as client:
                live = build_runtime(scratch, client, tools=tools, sim_sleep=False)
                return await replay_runs(records, scratch, executors=live.executors, packs=live.packs,
                                         tolerance=tolerance, prices=prices, timeout_s=timeout_s)
        finally:
            scratch.close()
