"""The telemetry reader: metrics derived from the outbox, exactly once across a takeover, only the lease
holder exposes fleet series, and per-run series leave after their retention window."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetforge.adapters.readers.telemetry import Telemetry
from fleetforge.adapters.readers.telemetry.reader import TelemetryReader
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.readers import ReaderLoop, ReaderOptions
from fleetforge.domain.names import EventKind as K
from tests.unit.test_telemetry_metrics import BUDGET_RUN, llm, run_workload

FLAKY = {"workspace": "acme", "app": "flaky", "seed": 3,
         "steps": [llm(f"f{i}", fail_rate=0.6, failure_kinds=["http_5xx"])
                   | {"execution": {"max_attempts": 4, "retry_backoff_ms": 1}} for i in range(6)]}


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """{sample name + sorted labels: value} of one scrape (the exposition parsed by prometheus_client)."""
    text = generate_latest(registry).decode()
    got: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            got[s.name + str(sorted(s.labels.items()))] = s.value
    return got


def _total(registry: CollectorRegistry, name: str) -> float:
    text = generate_latest(registry).decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _loop(store: SqliteStore, telemetry: Telemetry, holder: str, **kw: float) -> tuple[ReaderLoop, TelemetryReader]:
    reader = telemetry.reader(store, **kw)
    loop = ReaderLoop(store, reader, holder=holder, options=ReaderOptions(batch_size=7, lease_ttl_ms=60_000))
    reader.lease_valid = loop.lease.valid
    return loop, reader


def _drain(loop: ReaderLoop) -> None:
    while loop.step():
        pass


def test_counts_survive_a_takeover_exactly(tmp_path: Path) -> None:
    run_workload(tmp_path, [BUDGET_RUN, FLAKY, FLAKY], lambda _: None)
    store = SqliteStore(tmp_path / "state.db")
    kinds = Counter(r.kind for r in store.iter_outbox())
    truth = kinds[K.STEP_RETRY_SCHEDULED]
    assert truth > 0
    a = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    b = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    assert a.registry is not None and b.registry is not None
    loop_a, _ = _loop(store, a, "a")
    loop_b, _ = _loop(store, b, "b")
    for _ in range(3):  # a few pages, then "a" dies (its lease is released here, as if it expired)
        loop_a.step()
    loop_b.step()
    assert not loop_b.holding and _total(b.registry, "fleetforge_step_retries_total") == 0
    partial = _samples(a.registry)
    loop_a._drop()
    loop_a.lease.release()
    assert _total(a.registry, "fleetforge_step_retries_total") == 0  # a non-holder exposes none
    loop_b.step()
    assert loop_b.holding
    restored = _samples(b.registry)  # the ledger "a" saved, plus the page "b" handled since
    assert all(restored[k] >= v for k, v in partial.items() if "_created" not in k)
    _drain(loop_b)
    assert _total(b.registry, "fleetforge_step_retries_total") == truth
    lag = _total(b.registry, "fleetforge_queue_lag_seconds_count")
    assert lag == kinds[K.STEP_STARTED]
    # the same again in one go: one process, no takeover, gives the same scrape
    c = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    assert c.registry is not None
    store.forget_cursor("telemetry2")
    loop_c, _ = _loop(store, c, "c", name="telemetry2")  # type: ignore[arg-type]
    _drain(loop_c)
    one_go = {k: v for k, v in _samples(c.registry).items() if "_created" not in k}
    after = {k: v for k, v in _samples(b.registry).items() if "_created" not in k}
    assert set(one_go) == set(after)
    for k, v in one_go.items():
        assert abs(after[k] - v) <= 1e-6 * max(1.0, abs(v)), k
    store.close()


def test_per_run_series_leave_after_the_retention_window(tmp_path: Path) -> None:
    run_workload(tmp_path, [BUDGET_RUN, BUDGET_RUN], lambda _: None)
    store = SqliteStore(tmp_path / "state.db")
    t = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    assert t.registry is not None
    loop, reader = _loop(store, t, "a", series_retention_s=600.0)
    _drain(loop)
    assert _total(t.registry, "fleetforge_budget_tokens_remaining_count") > 0
    assert reader.sweep(force=True) == 0  # the runs ended just now
    reader.wall = lambda: 1e12  # far in the future: every run left its window
    assert reader.sweep(force=True) == 2
    assert _total(t.registry, "fleetforge_budget_tokens_remaining_count") == 0
    assert _total(t.registry, "fleetforge_queue_lag_seconds_count") > 0  # fleet series stay
    assert '"ended":{}' in reader.checkpoint()
    store.close()


def test_per_run_series_are_rebuilt_at_most_once_per_rebuild_interval(tmp_path: Path) -> None:
    """Each rebuild makes a MeterProvider, which leaves an at-fork hook behind for good: rebuilds are rare."""
    run_workload(tmp_path, [BUDGET_RUN, BUDGET_RUN], lambda _: None)
    store = SqliteStore(tmp_path / "state.db")
    t = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    assert t.registry is not None
    loop, reader = _loop(store, t, "a", series_retention_s=600.0)
    assert reader.rebuild_every_s == 60.0  # a tenth of the window
    _drain(loop)
    now = [reader.wall() + 600.0]  # every run just left its window
    reader.wall = lambda: now[0]
    reader._swept_at = now[0] - 30.0  # the last sweep: 30 s ago
    assert reader.sweep() == 0
    assert _total(t.registry, "fleetforge_budget_tokens_remaining_count") > 0
    now[0] += 30.0
    assert reader.sweep() == 2
    assert _total(t.registry, "fleetforge_budget_tokens_remaining_count") == 0
    store.close()
