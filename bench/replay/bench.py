"""What a replay costs beside running the same runs live, and what a fork costs to store.

The demo fleet (N runs, simulator without sleeps, the demo's loopback webhook) runs live on a SQLite
store; then all its runs are replayed together from the record (`adapters.operations.replay`, a scratch
store, nothing external called), and each run is forked from its last step. Figures: live and replay wall
time (the replay / live ratio is the baseline comparison; the replay still waits out the recorded retries'
backoff), replays that reproduced their run, and the time to store one fork (p50, p95).

    PYTHONPATH=src python bench/replay/bench.py [--runs 40] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from fleetforge.adapters import operations
from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.devstack.webhook import WebhookServer
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet


async def live(store: SqliteStore, runs: int, seed: int, webhook: str) -> tuple[list[str], float]:
    async with httpx.AsyncClient() as client:
        runtime = build_runtime(store, client, sim_sleep=False)
        ids = [runtime.submit(json.loads(json.dumps(s).replace(WEBHOOK_PLACEHOLDER, webhook)))
               for s in demo_fleet(runs, seed)]
        started = time.perf_counter()
        await runtime.worker("bench", concurrency=32, poll_interval_s=0.005).run(until_idle=True)
        return ids, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "state.db")
        store.migrate()
        hook = WebhookServer().start()
        try:
            ids, live_s = asyncio.run(live(store, args.runs, args.seed, hook.base_url))
        finally:
            hook.stop()
        started = time.perf_counter()
        reports = asyncio.run(operations.replay(store, ids))
        replay_s = time.perf_counter() - started
        fork_ms = []
        for rid in ids:
            run = store.get_run(rid)
            assert run is not None
            last = run.spec["steps"][-1]["id"]
            started = time.perf_counter()
            operations.fork(store, rid, last, actor="bench")
            fork_ms.append((time.perf_counter() - started) * 1000)
        store.close()
    reproduced = sum(r.ok for r in reports)
    print(f"runs {len(ids)}: live {live_s:.2f} s, replay {replay_s:.2f} s "
          f"(replay / live = {replay_s / live_s:.2f}), reproduced {reproduced}/{len(reports)}")
    q = statistics.quantiles(fork_ms, n=20)
    print(f"fork stored in p50 {statistics.median(fork_ms):.2f} ms, p95 {q[18]:.2f} ms")


if __name__ == "__main__":
    main()
