"""FleetForge analytics benchmark (embedded chDB), each figure beside a baseline from the same script.

1. ingest: events/s from outbox envelopes into chDB with the parse pipeline and all derived views
   (the sink's writer: de-dup lookup + insert), beside a raw chDB INSERT of the same typed rows
   into view-less copies of the raw tables. Targets: ratio >= 0.5 and >= 100k events/s.
2. queries: latency of every dashboard query over N step events (default 1M; --rows 10000000 for
   the 10M figure), beside the same answer computed from the raw tables; the answers must agree.
   Target: p95 <= 100 ms on the derived tables.
3. freshness: outbox commit -> row in the derived tables, with the embedded sink streaming a
   steady outbox. Target: p95 <= 2 s.

Run: python bench/analytics/bench_analytics.py [--events N] [--rows N] [--repeat K] [--data-dir D]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.embedded import EmbeddedAnalytics
from fleetforge.adapters.readers.clickhouse.schema import apply_schema
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.analytics import SourceEvent

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tests.integration.clickhouse_fleet import open_store, run_fleet  # noqa: E402

RAW_TABLES = ("telemetry.run_events", "telemetry.step_events")
ALL_TABLES = (*RAW_TABLES, "telemetry.event_ids", "telemetry.rejected_events", "telemetry.run_latency_metrics",
              "telemetry.step_retry_heatmap", "telemetry.budget_burndown", "telemetry.policy_decision_rates",
              "telemetry.tool_error_taxonomy")


def named(path: Path) -> dict[str, str]:
    parts = re.split(r"^--\s*name:\s*([\w.]+)\s*$", path.read_text(), flags=re.M)
    return {n: b.strip().rstrip(";") for n, b in zip(parts[1::2], parts[2::2], strict=True)}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def templates(workdir: Path) -> list[str]:
    """Envelopes of a real fleet run by the runtime in-process (the shapes the sink really sees)."""
    store = open_store(workdir / "template" / "state.db")
    run_fleet(store, runs=60, seed=1, cancel_every=11)
    envs = [r.envelope for r in store.iter_outbox()]
    store.close()
    return envs


def replicate(envs: list[str], n: int) -> list[SourceEvent]:
    """`n` envelopes cycling through the templates, each with a fresh event id and run id."""
    out: list[SourceEvent] = []
    parsed = [json.loads(e) for e in envs]
    copy = 0
    while len(out) < n:
        suffix = f"-{copy}"
        for d in parsed:
            eid = str(uuid.uuid4())
            d2 = dict(d, id=eid, run_id=d["run_id"] + suffix)
            out.append(SourceEvent(eid, json.dumps(d2, separators=(",", ":"), ensure_ascii=False)))
            if len(out) == n:
                break
        copy += 1
    return out


def bench_ingest(ch: ChdbAnalytics, events: list[SourceEvent], batch: int) -> dict[str, Any]:
    for t in ALL_TABLES:
        ch.execute(f"TRUNCATE TABLE {t}")
    writer = EnvelopeWriter(ch)
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        writer.write(events[i:i + batch])
    ours = len(events) / (time.perf_counter() - start)
    stored = sum(int(ch.rows(f"SELECT count() FROM {t}")[0][0]) for t in RAW_TABLES)
    assert stored == len(events), (stored, len(events))
    # baseline: the same typed rows, pre-serialized, inserted with plain INSERTs into view-less copies
    ch.execute("CREATE DATABASE IF NOT EXISTS bench")
    payloads: list[tuple[str, bytes]] = []
    for t in RAW_TABLES:
        copy = "bench." + t.split(".")[1]
        ch.execute(f"DROP TABLE IF EXISTS {copy}")
        ch.execute(f"CREATE TABLE {copy} AS {t}")
        for i in range(0, len(events), batch):
            data = ch.text(f"SELECT * FROM {t} ORDER BY event_id LIMIT {batch} OFFSET {i}", "JSONEachRow")
            if data:
                payloads.append((copy, data.encode()))
    session = ch._sessions[0]  # the raw engine, no writer in between
    start = time.perf_counter()
    for copy, data in payloads:
        inserter = session.send_insert(f"INSERT INTO {copy}", "JSONEachRow")
        inserter.append(data)
        inserter.finish()
    raw = len(events) / (time.perf_counter() - start)
    return {"events": len(events), "batch": batch, "ours_events_per_s": round(ours),
            "raw_insert_rows_per_s": round(raw), "ratio": round(ours / raw, 3)}


def bench_queries(ch: ChdbAnalytics, rows: int, repeat: int) -> dict[str, Any]:
    for t in ALL_TABLES:
        ch.execute(f"TRUNCATE TABLE {t}")
    gen = named(HERE / "synthetic.sql")
    start = time.perf_counter()
    step = 2_000_000
    for offset in range(0, rows, step):  # bounded memory: inserts of 2M rows
        n = min(step, rows - offset)
        ch.execute(gen["step_events"].replace("numbers({rows:UInt64})", f"numbers({offset}, {n})"))
    ch.execute(gen["run_events"], {"runs": max(1, rows // 15)})
    ch.execute("OPTIMIZE TABLE telemetry.run_latency_metrics FINAL")
    for t in ALL_TABLES[4:]:
        ch.execute(f"OPTIMIZE TABLE {t} FINAL")
    loaded = time.perf_counter() - start
    queries = named(HERE / "queries.sql")
    result: dict[str, Any] = {"step_events": rows, "load_s": round(loaded, 1), "queries": {}}
    for name in sorted({n.split(".")[0] for n in queries}):
        timings: dict[str, list[float]] = {"derived": [], "raw": []}
        answers: dict[str, list[tuple[Any, ...]]] = {}
        for kind in ("derived", "raw"):
            sql = queries[f"{name}.{kind}"]
            answers[kind] = ch.rows(sql)  # warm-up, and the answer
            for _ in range(repeat):
                t0 = time.perf_counter()
                ch.rows(sql)
                timings[kind].append((time.perf_counter() - t0) * 1000)
        same = _agree(answers["derived"], answers["raw"])
        result["queries"][name] = {
            "derived_p50_ms": round(statistics.median(timings["derived"]), 1),
            "derived_p95_ms": round(pct(timings["derived"], 95), 1),
            "raw_p50_ms": round(statistics.median(timings["raw"]), 1),
            "raw_p95_ms": round(pct(timings["raw"], 95), 1),
            "rows": len(answers["derived"]), "answers_agree": same,
        }
    return result


def _agree(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]], tolerance: float = 0.05) -> bool:
    """Exact equality, except the last column of rows whose query ends in a t-digest p95 (5% tolerance)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
            if x == y:
                continue
            approx = i == len(ra) - 1 and isinstance(x, float) and isinstance(y, float)
            if not approx or abs(x - y) > tolerance * max(abs(x), abs(y), 1.0):
                return False
    return True


def bench_freshness(workdir: Path, seconds: float, rate: int) -> dict[str, Any]:
    store = SqliteStore(workdir / "fresh" / "state.db")
    store.migrate()
    template = Envelope.from_json(templates_cache[0])
    lags: list[float] = []
    commit_us: dict[str, int] = {}

    def on_flush(batch: list[SourceEvent]) -> None:
        now = time.time_ns() // 1000
        lags.extend((now - commit_us[e.event_id]) / 1e6 for e in batch if e.event_id in commit_us)

    with EmbeddedAnalytics(workdir / "fresh" / "clickhouse") as analytics:
        analytics.apply()
        analytics.start(store)
        assert analytics._sink is not None
        analytics._sink.on_flush = on_flush
        tick, per_tick = 0.05, max(1, int(rate * 0.05))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            batch = []
            for _ in range(per_tick):
                eid = str(uuid.uuid4())
                batch.append(Envelope(template.kind, time.time_ns() // 1000, template.run_id, template.workspace,
                                      template.app, template.trace, template.payload, template.step_id,
                                      template.attempt, eid))
            with store.transaction() as tx:
                tx.append_events(batch)
            committed = time.time_ns() // 1000
            commit_us.update((e.id, committed) for e in batch)
            time.sleep(tick)
        analytics.stop()
        visible = analytics.analytics.rows("SELECT count() FROM telemetry.run_events")[0][0]
    store.close()
    return {"events": len(commit_us), "visible": int(visible), "rate_per_s": rate,
            "p50_s": round(statistics.median(lags), 3), "p95_s": round(pct(lags, 95), 3),
            "max_s": round(max(lags), 3), "baseline_flush_interval_s": 0.5}


templates_cache: list[str] = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000, help="envelopes for the ingest figure")
    ap.add_argument("--batch", type=int, default=50_000, help="events per insert")
    ap.add_argument("--rows", type=int, default=1_000_000, help="step events for the query figure (10M: 10000000)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs of each query")
    ap.add_argument("--freshness-seconds", type=float, default=8.0)
    ap.add_argument("--data-dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--skip", action="append", default=[], choices=["ingest", "queries", "freshness"])
    args = ap.parse_args()
    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="ff-bench-analytics-"))
    report: dict[str, Any] = {}
    try:
        templates_cache.extend(templates(workdir))
        ch = ChdbAnalytics(workdir / "clickhouse")
        apply_schema(ch)
        try:
            if "ingest" not in args.skip:
                report["ingest"] = bench_ingest(ch, replicate(templates_cache, args.events), args.batch)
                print(json.dumps({"ingest": report["ingest"]}), flush=True)
            if "queries" not in args.skip:
                report["queries"] = bench_queries(ch, args.rows, args.repeat)
                print(json.dumps({"queries": report["queries"]}), flush=True)
        finally:
            ch.close()
        if "freshness" not in args.skip:
            report["freshness"] = bench_freshness(workdir, args.freshness_seconds, rate=2000)
            print(json.dumps({"freshness": report["freshness"]}), flush=True)
    finally:
        if args.data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    _print_table(report)


def _print_table(r: dict[str, Any]) -> None:
    print("\nFleetForge analytics benchmark (chDB embedded)")
    if "ingest" in r:
        i = r["ingest"]
        print(f"  ingest   {i['ours_events_per_s']:>10,} events/s envelopes -> raw + 6 derived tables "
              f"| raw INSERT of the same rows {i['raw_insert_rows_per_s']:,} rows/s | ratio {i['ratio']}")
    if "queries" in r:
        q = r["queries"]
        print(f"  queries  over {q['step_events']:,} step events (derived vs raw tables, ms)")
        for name, v in q["queries"].items():
            print(f"    {name:16s} derived p50 {v['derived_p50_ms']:7.1f} p95 {v['derived_p95_ms']:7.1f} | raw p50 "
                  f"{v['raw_p50_ms']:8.1f} p95 {v['raw_p95_ms']:8.1f} | agree {v['answers_agree']}")
    if "freshness" in r:
        f = r["freshness"]
        print(f"  freshness outbox commit -> derived table: p50 {f['p50_s']} s, p95 {f['p95_s']} s, max {f['max_s']} s "
              f"({f['events']} events at {f['rate_per_s']}/s; sink flush interval {f['baseline_flush_interval_s']} s)")


if __name__ == "__main__":
    main()
