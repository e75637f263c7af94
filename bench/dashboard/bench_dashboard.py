"""Built-in dashboard benchmark: every panel of the page (the shared panel SQL, expanded as the page
expands it) over N synthetic step events in chDB, beside the same answer computed from the raw tables.

Target: p95 <= 100 ms per panel (the analytics query budget) at 10M step events.

Run: python bench/dashboard/bench_dashboard.py [--rows 10000000] [--repeat 20] [--range-hours 168]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.schema import apply_schema
from fleetforge.adapters.views.dashboard.app import Dashboard
from fleetforge.core.panels import PanelQuery, expand

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_analytics", HERE.parent / "analytics" / "bench_analytics.py")
assert _spec and _spec.loader
analytics_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analytics_bench)

# The same answers from the raw tables (what the page would cost without the derived tables).
RAW = {
    "policy_bursts": """
        SELECT toUnixTimestamp(toStartOfInterval(toDateTime(occurred_at), INTERVAL $__interval_s second)) AS t,
               effect, count() AS decisions
        FROM telemetry.step_events
        WHERE kind = 'policy_decision' AND $__timeFilter(occurred_at)
          AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        GROUP BY t, effect ORDER BY t, effect""",
    "retry_heatmap": """
        SELECT step_type, multiIf(kind = 'step_succeeded', 'succeeded', kind = 'step_failed', 'failed', 'denied')
               AS status, attempt, count() AS steps
        FROM telemetry.step_events
        WHERE kind IN ('step_succeeded', 'step_failed', 'step_denied') AND $__timeFilter(occurred_at)
          AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        GROUP BY step_type, status, attempt ORDER BY step_type, status, attempt""",
    "tool_flakes": """
        SELECT tool, provider, count() AS calls, countIf(NOT ok) AS failures,
               countIf(NOT ok) / count() AS flake_rate, quantileTDigest(0.95)(latency_ms) AS p95_ms
        FROM telemetry.step_events
        WHERE kind = 'tool_call' AND $__timeFilter(occurred_at)
        GROUP BY tool, provider ORDER BY flake_rate DESC, calls DESC""",
    "agent_turns": """
        SELECT toUnixTimestamp(toStartOfInterval(toDateTime(occurred_at), INTERVAL $__interval_s second)) AS t,
               countIf(kind = 'step_succeeded') AS turns_ok,
               countIf(kind = 'step_denied' OR (kind = 'step_failed' AND final)) AS turns_failed,
               countIf(kind != 'step_skipped' AND attempt > 1) AS turn_retries, sum(tokens) AS turn_tokens
        FROM telemetry.step_events
        WHERE kind IN ('step_succeeded', 'step_failed', 'step_denied', 'step_skipped') AND step_type = 'llm'
          AND attributes['agent'] != '' AND $__timeFilter(occurred_at)
          AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        GROUP BY t ORDER BY t""",
    "agent_tool_calls": """
        SELECT tool, countIf(kind = 'step_succeeded') AS ok, countIf(kind = 'step_failed' AND final) AS failed,
               countIf(kind = 'step_denied') AS denied, ok + failed + denied AS calls
        FROM telemetry.step_events
        WHERE kind IN ('step_succeeded', 'step_failed', 'step_denied') AND step_type = 'tool'
          AND attributes['agent'] != '' AND $__timeFilter(occurred_at)
          AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        GROUP BY tool ORDER BY calls DESC, tool""",
    "budget_burndown": """
        SELECT toUnixTimestamp(toStartOfInterval(toDateTime(occurred_at), INTERVAL $__interval_s second)) AS t,
               workspace, app, sumIf(tokens_used, kind = 'budget_reconciled') AS tokens_used
        FROM telemetry.step_events
        WHERE kind IN ('budget_reserved', 'budget_reconciled') AND $__timeFilter(occurred_at)
          AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        GROUP BY t, workspace, app ORDER BY workspace, app, t""",
}


def timed(fn: Any, repeat: int) -> tuple[float, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), analytics_bench.pct(samples, 95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic step events (10M: 10000000)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per panel")
    ap.add_argument("--range-hours", type=int, default=168, help="time range the page asks for")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ff-bench-dashboard-"))
    ch = ChdbAnalytics(workdir / "clickhouse")
    try:
        apply_schema(ch)
        t0 = time.perf_counter()
        gen = analytics_bench.named(analytics_bench.HERE / "synthetic.sql")
        for offset in range(0, args.rows, 2_000_000):
            n = min(2_000_000, args.rows - offset)
            ch.execute(gen["step_events"].replace("numbers({rows:UInt64})", f"numbers({offset}, {n})"))
        ch.execute(gen["run_events"], {"runs": max(1, args.rows // 15)})
        for table in analytics_bench.ALL_TABLES[4:]:
            ch.execute(f"OPTIMIZE TABLE {table} FINAL")
        print(f"loaded {args.rows:,} step events in {time.perf_counter() - t0:.1f}s", flush=True)
        dash = Dashboard(ch, None)
        to = int(time.time())
        query = {"from": [str(to - args.range_hours * 3600)], "to": [str(to)]}
        meta = dash.meta()
        variables = {"workspace": meta["workspaces"], "app": meta["apps"]}
        interval = max(60, ((args.range_hours * 3600) // 120) // 60 * 60)
        pq = PanelQuery(to - args.range_hours * 3600, to, interval, variables)
        print(f"\n{'panel':<16}{'rows':>6}{'p50 ms':>10}{'p95 ms':>10}{'raw p50':>10}{'raw p95':>10}{'speed-up':>10}"
              f"{'<=100ms':>9}")
        for name in sorted(dash.panels):
            rows = len(dash.panel(name, query)["rows"])
            p50, p95 = timed(lambda n=name: dash.panel(n, query), args.repeat)
            raw = RAW.get(name)
            if raw:
                r50, r95 = timed(lambda r=raw: ch.rows(expand(r, pq)), max(3, args.repeat // 4))
                extra = f"{r50:>10.1f}{r95:>10.1f}{r50 / p50:>9.1f}x"
            else:
                extra = f"{'–':>10}{'–':>10}{'–':>10}"
            print(f"{name:<16}{rows:>6}{p50:>10.1f}{p95:>10.1f}{extra}{'yes' if p95 <= 100 else 'NO':>9}", flush=True)
    finally:
        ch.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
