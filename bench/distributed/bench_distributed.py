"""End-to-end benchmark of the distributed topology on loopback (PostgreSQL, Tansu, forwarder, sink).

Offers a steady load (`--rate` runs per second for `--seconds`) to N `fleetforge worker` processes and
measures, through the whole pipeline (outbox -> transactional forwarder -> Kafka -> sink -> chDB):

- freshness: per event, outbox commit (created_us) -> its row in the derived tables (event_ids.ingested_at,
  written by the same insert that feeds the materialized views); p50/p95/p99/max;
- sustained events/s: outbox events / (first outbox commit -> last event in ClickHouse);
- baseline, same run: the rate at which the workers committed events to the outbox (what the pipeline
  must keep up with), and the sink's flush interval (the floor of freshness by design).

Run: python bench/distributed/bench_distributed.py [--workers 3] [--rate 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.chaos.topology import REPO, Topology, submit_specs
from tests.integration.clickhouse_fleet import fleet_specs


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [0.0])[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rate", type=int, default=20, help="runs submitted per second")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--flush-s", type=float, default=0.5, help="sink flush interval")
    a = p.parse_args()
    topo = Topology(Path(tempfile.mkdtemp(prefix="ff-bench-dist-")), workers=a.workers, worker_concurrency=64,
                    sink_flush_s=a.flush_s)
    try:
        topo.start()
        time.sleep(5)  # consumer group joined, topic created

        def load() -> None:
            for s in range(a.seconds):
                t = time.monotonic()
                submit_specs(topo.store_url, fleet_specs(a.rate, 1000 + s))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))

        loader = threading.Thread(target=load)
        loader.start()
        loader.join()
        topo.wait_quiet(timeout_s=600)
        time.sleep(3)
        report = topo.verify(timeout_s=120)
        store = topo.store()
        try:
            created = {r.event_id: r.created_us for r in store.iter_outbox()}
        finally:
            store.close()
        done = subprocess.run(
            [sys.executable, "-m", "fleetforge", "sql", "--data-dir", str(topo.data_dir), "--format", "TSV",
             "SELECT event_id, toUnixTimestamp64Micro(min(ingested_at)) FROM telemetry.event_ids GROUP BY event_id"],
            capture_output=True, text=True, cwd=REPO, env=topo.env(), check=True)
        ingested = {i: int(us) for i, us in (line.split("\t") for line in done.stdout.splitlines() if line)}
    finally:
        topo.close()
    lags = sorted((ingested[i] - c) / 1e6 for i, c in created.items() if i in ingested)
    first, last_commit = min(created.values()), max(created.values())
    last_in = max(ingested[i] for i in created if i in ingested)
    figures = {
        "events": len(created), "runs": a.rate * a.seconds, "workers": a.workers,
        "lost": report["lost"], "double_counted": report["double_counted"],
        "derived_mismatches": report["derived_mismatches"], "caught_up_by_verifier": report["caught_up_by_verifier"],
        "freshness_s": {"p50": round(_pct(lags, 50), 3), "p95": round(_pct(lags, 95), 3),
                        "p99": round(_pct(lags, 99), 3), "max": round(lags[-1], 3)},
        "pipeline_events_per_s": round(len(created) / ((last_in - first) / 1e6), 1),
        "baseline_outbox_commit_events_per_s": round(len(created) / max(1e-6, (last_commit - first) / 1e6), 1),
        "baseline_sink_flush_interval_s": a.flush_s,
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
