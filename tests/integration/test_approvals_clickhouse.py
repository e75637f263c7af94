"""The approval wait in ClickHouse (chDB, the real engine): the derived `policy_decision_rates` counts the
human_approval decisions and sums their wait exactly as the state tables (`policy_decisions`) hold them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetforge import Client
from fleetforge.adapters.readers.clickhouse.chdb_backend import ChdbAnalytics
from fleetforge.adapters.readers.clickhouse.schema import apply_schema
from fleetforge.adapters.readers.clickhouse.sink import SinkConfig
from fleetforge.adapters.readers.clickhouse.sink_reader import OutboxSink
from fleetforge.adapters.readers.clickhouse.writer import EnvelopeWriter
from fleetforge.domain.names import HUMAN_APPROVAL_PACK
from tests.integration.clickhouse_fleet import open_store


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbAnalytics]:
    store = ChdbAnalytics(tmp_path / "clickhouse")
    apply_schema(store)
    yield store
    store.close()


def test_approval_wait_in_the_derived_table_equals_the_state_tables(tmp_path: Path, chdb: ChdbAnalytics) -> None:
    store = open_store(tmp_path / "state.db")
    client = Client(store=store)

    def spec(timeout_ms: int) -> dict[str, object]:
        return {"steps": [{"id": "a", "type": "tool", "inputs": {"tool": "noop", "args": {}}},
                          {"id": "pay", "type": "tool", "depends_on": ["a"], "approval": {"timeout_ms": timeout_ms},
                           "inputs": {"tool": "noop", "args": {}}}]}

    handles = [client.submit(spec(600_000)) for _ in range(4)] + [client.submit(spec(1))]
    with client.worker():
        deadline = time.monotonic() + 30
        while not all(h.result().steps["pay"].status == "waiting_approval" for h in handles[:4]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for i, h in enumerate(handles[:4]):
            time.sleep(0.05 * i)
            if i % 2:
                h.deny("pay", f"no {i}", actor="qa")
            else:
                h.approve("pay", actor="qa")
        results = [h.wait(30) for h in handles]
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded", "failed", "failed"]
    assert results[4].error == "approval_timeout"
    sink = OutboxSink(store, EnvelopeWriter(chdb), SinkConfig(batch_size=100))
    sink.drain()
    want: dict[str, tuple[int, float]] = {}
    for h in handles:
        for d in store.get_decisions(h.run_id):
            assert d.pack == HUMAN_APPROVAL_PACK
            n, wait = want.get(d.effect, (0, 0.0))
            want[d.effect] = (n + 1, wait + d.wait_us / 1000)
    got = {str(effect): (int(n), float(w)) for effect, n, w in chdb.rows(
        "SELECT effect, sum(decisions), sum(wait_ms_sum) FROM telemetry.policy_decision_rates "
        f"WHERE pack = '{HUMAN_APPROVAL_PACK}' GROUP BY effect")}
    assert set(got) == set(want) == {"allow", "deny"}
    for effect, (n, wait) in want.items():
        assert got[effect][0] == n
        assert got[effect][1] == pytest.approx(wait, abs=1e-6)
    [(longest,)] = chdb.rows("SELECT max(wait_ms_max) FROM telemetry.policy_decision_rates "
                             f"WHERE pack = '{HUMAN_APPROVAL_PACK}'")
    assert float(longest) == pytest.approx(max(d.wait_us for h in handles for d in store.get_decisions(h.run_id))
                                           / 1000, abs=1e-6)
