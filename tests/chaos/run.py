"""Chaos trials on the loopback topology: `python -m tests.chaos.run --trials 20 [--outage-s 30]`.

Each trial: a fresh PostgreSQL database, broker, N workers, forwarder and sink; a steady workload is
submitted while workers, the forwarder and the sink are SIGKILLed at random moments and restarted,
and the broker and the analytics store (the sink process owning chDB) are down for `outage_s`
seconds. Then everything recovers, and the derived ClickHouse tables are compared with PostgreSQL.
Prints one line per trial and a total: trials, faults injected, mismatches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.topology import Topology, submit_specs
from tests.integration.clickhouse_fleet import fleet_specs

__all__ = ["TrialResult", "main", "run_trial", "run_trials"]


@dataclass
class TrialResult:
    trial: int
    seed: int
    runs: int
    faults: Counter[str] = field(default_factory=Counter)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def mismatches(self) -> int:
        r = self.report
        if self.error or not r:
            return 1
        return int(r["lost"]) + int(r["unknown"]) + int(r["double_counted"]) + len(r["derived_mismatches"]) \
            + int(r["open_runs"])


def _workload(topo: Topology, seed: int, batches: int, per_batch: int, every_s: float,
              submitted: list[str], done: threading.Event) -> None:
    try:
        for b in range(batches):
            specs = fleet_specs(per_batch, seed * 1000 + b)
            submitted.extend(submit_specs(topo.store_url, specs))
            time.sleep(every_s)
    finally:
        done.set()


def run_trial(trial: int, seed: int, *, outage_s: float, kills: int, batches: int, per_batch: int,
              workers: int = 2, root: Path | None = None) -> TrialResult:
    """One trial; never raises (an exception is reported as the trial's error)."""
    rng = random.Random(seed)
    result = TrialResult(trial, seed, batches * per_batch)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"ff-chaos-{trial}-", dir=root))
    topo = Topology(workdir, workers=workers)
    try:
        topo.start()
        submitted: list[str] = []
        done = threading.Event()
        load = threading.Thread(target=_workload, args=(topo, seed, batches, per_batch, 1.0, submitted, done),
                                daemon=True)
        load.start()
        parts = [f"worker-{i}" for i in range(workers)] + ["forwarder", "sink"]
        # the outage window starts at a random moment of the first half of the workload
        outage_at = time.monotonic() + rng.uniform(1.0, max(1.5, batches / 2))
        sink_offset = rng.uniform(0.0, outage_s / 2)
        kill_times = sorted(time.monotonic() + rng.uniform(0.5, batches + outage_s) for _ in range(kills))
        state = {"broker_down": False, "broker_done": False, "sink_down": False, "sink_done": False}
        restart_at: dict[str, float] = {}
        workers_ = [p for p in parts if p.startswith("worker-")]
        victims = ["forwarder", "sink", rng.choice(workers_)]
        victims = (victims + [rng.choice(parts) for _ in range(max(0, kills - 3))])[:kills]
        rng.shuffle(victims)
        end = outage_at + outage_s + sink_offset
        while time.monotonic() < end or kill_times or restart_at or not done.is_set():
            now = time.monotonic()
            if not state["broker_done"] and not state["broker_down"] and now >= outage_at:
                topo.broker_down()
                state["broker_down"] = True
                result.faults["broker outage"] += 1
            if state["broker_down"] and now >= outage_at + outage_s:
                topo.broker_up()
                state["broker_down"], state["broker_done"] = False, True
            if not state["sink_done"] and not state["sink_down"] and now >= outage_at + sink_offset:
                topo.kill("sink")
                state["sink_down"] = True
                result.faults["analytics outage"] += 1
            if state["sink_down"] and now >= outage_at + sink_offset + outage_s:
                topo.start_part("sink")
                state["sink_down"], state["sink_done"] = False, True
            while kill_times and kill_times[0] <= now:
                kill_times.pop(0)
                victim = victims.pop() if victims else rng.choice(parts)
                if victim == "sink" and state["sink_down"]:
                    victim = rng.choice(workers_)
                topo.kill(victim)
                result.faults[f"SIGKILL {victim.split('-')[0]}"] += 1
                restart_at[victim] = now + rng.uniform(0.2, 3.0)
            for name, at in list(restart_at.items()):
                if now >= at:
                    del restart_at[name]
                    if not (name == "sink" and state["sink_down"]):
                        topo.start_part(name)
            time.sleep(0.1)
        load.join()
        _open_runs, backlog = topo.wait_quiet(timeout_s=240)
        time.sleep(3.0)  # the sink's flush interval and a poll or two
        result.report = topo.verify(timeout_s=120)
        result.report["forwarder_backlog"] = backlog
        result.report["submitted"] = len(submitted)
    except Exception as exc:  # reported, and counted as a mismatch
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        topo.close()
        result.seconds = time.monotonic() - started
        if not result.error and os.environ.get("FLEETFORGE_CHAOS_KEEP") != "1":
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return result


def run_trials(trials: int, *, outage_s: float, kills: int = 4, batches: int = 8, per_batch: int = 6,
               seed: int = 1, echo: bool = True) -> list[TrialResult]:
    results = []
    for t in range(trials):
        r = run_trial(t + 1, seed + t, outage_s=outage_s, kills=kills, batches=batches, per_batch=per_batch)
        results.append(r)
        if echo:
            rep = r.report
            print(f"trial {r.trial:2d} seed {r.seed}: {r.seconds:5.1f}s runs {rep.get('submitted', '?')} "
                  f"events {rep.get('outbox_events', '?')} faults {dict(r.faults)} lost {rep.get('lost', '?')} "
                  f"double {rep.get('double_counted', '?')} derived-mismatch {rep.get('derived_mismatches', '?')} "
                  f"open {rep.get('open_runs', '?')} caught-up-by-verifier {rep.get('caught_up_by_verifier', '?')}"
                  + (f" ERROR {r.error}" if r.error else ""), flush=True)
    if echo:
        faults: Counter[str] = Counter()
        for r in results:
            faults.update(r.faults)
        print(json.dumps({"trials": len(results), "outage_s": outage_s,
                          "faults_injected": sum(faults.values()), "faults": dict(faults),
                          "events": sum(int(r.report.get("outbox_events", 0)) for r in results),
                          "runs": sum(int(r.report.get("submitted", 0)) for r in results),
                          "lost": sum(int(r.report.get("lost", 0)) for r in results),
                          "double_counted": sum(int(r.report.get("double_counted", 0)) for r in results),
                          "trials_with_mismatches": sum(1 for r in results if r.mismatches),
                          "errors": [r.error for r in results if r.error]}), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=int(os.environ.get("FLEETFORGE_CHAOS_TRIALS", "3")))
    p.add_argument("--outage-s", type=float, default=float(os.environ.get("FLEETFORGE_CHAOS_OUTAGE_S", "30")))
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs per trial (workers, forwarder, sink)")
    p.add_argument("--batches", type=int, default=8, help="workload: batches of runs, one per second")
    p.add_argument("--per-batch", type=int, default=6, help="workload: runs per batch")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = run_trials(a.trials, outage_s=a.outage_s, kills=a.kills, batches=a.batches,
                         per_batch=a.per_batch, seed=a.seed)
    return 0 if all(r.mismatches == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
