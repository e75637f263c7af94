"""Metrics derived from a scripted run of the real runtime, read with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.readers.telemetry import QUEUE_LAG_BUCKETS, RunIdMode, Telemetry, metric_views
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.names import EventKind as K
from fleetforge.domain.names import Metric as M

Observer = Callable[[list[Envelope]], None]


def run_workload(tmp_path: Path, specs: Sequence[dict[str, Any]], observer: Observer, *,
                 concurrency: int = 1) -> list[str]:
    """Submit `specs` to the real runtime (SQLite, simulated LLM, demo tools) and run until idle."""

    async def go() -> list[str]:
        store = SqliteStore(tmp_path / "state.db")
        store.migrate()
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()),
                                        prices=PriceTable(), llm_base_url=None, llm_api_key=None,
                                        sim_sleep=False)
            runtime = Runtime(store, executors=executors, packs=default_packs(), observer=observer)
            ids = [runtime.submit(spec) for spec in specs]
            await runtime.worker("w1", concurrency=concurrency).run(until_idle=True)
        store.close()
        return ids

    return asyncio.run(go())


def llm(step_id: str, *deps: str, prompt: str = "summarize the fleet " * 20, **inputs: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "llm", "depends_on": list(deps),
            "inputs": {"model": "sim-small", "prompt": prompt, "output_tokens": 80, **inputs}}


BUDGET_RUN = {
    "workspace": "acme", "app": "support", "budget": {"tokens": 5000, "cost": 1.0},
    "packs": [{"name": "pii_redaction"}],
    "steps": [llm("a"), {"id": "t", "type": "tool", "depends_on": ["a"],
                         "inputs": {"tool": "calculator", "args": {"expression": "6*7"}}},
              llm("b", "t"), llm("c", "b")],
}
FLAKY_RUN = {
    "workspace": "acme", "app": "flaky", "seed": 3,
    "steps": [llm(f"f{i}", fail_rate=0.6, failure_kinds=["http_5xx"]) | {
        "execution": {"max_attempts": 6, "retry_backoff_ms": 1}} for i in range(6)],
}


class Recorder:
    """Feeds a Telemetry and collects delta metric points after every committed transaction."""

    def __init__(self, run_id_mode: RunIdMode = RunIdMode.BUDGET) -> None:
        self.reader = InMemoryMetricReader(preferred_temporality={
            Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA})
        self.provider = MeterProvider(metric_readers=[self.reader], views=metric_views())
        self.telemetry = Telemetry(meter_provider=self.provider, run_id_mode=run_id_mode)
        self.events: list[Envelope] = []
        self.batches: list[dict[str, Metric]] = []  # metrics collected after each batch, by name
        self.batch_events: list[list[Envelope]] = []

    def __call__(self, events: list[Envelope]) -> None:
        self.events.extend(events)
        self.batch_events.append(events)
        self.telemetry.observer(events)
        self.batches.append(collect(self.reader))

    def points(self, name: str) -> list[Any]:
        return [p for b in self.batches if name in b for p in b[name].data.data_points]

    def final(self, name: str) -> list[Any]:
        """The points of the last collection (the totals of a cumulative, asynchronous counter)."""
        return list(next(b[name] for b in reversed(self.batches) if name in b).data.data_points)

    def metric(self, name: str) -> Metric:
        return next(b[name] for b in self.batches if name in b)

    def of(self, kind: K) -> list[Envelope]:
        return [e for e in self.events if e.kind is kind]


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    rec = Recorder()
    run_workload(tmp_path_factory.mktemp("budget"), [BUDGET_RUN], rec)
    return rec


@pytest.fixture(scope="module")
def flaky_run(tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    rec = Recorder(RunIdMode.ALL)
    run_workload(tmp_path_factory.mktemp("flaky"), [FLAKY_RUN, BUDGET_RUN], rec, concurrency=4)
    return rec


def hist_values(points: list[HistogramDataPoint]) -> list[float]:
    """The single value each delta point holds (one record per point)."""
    assert all(p.count == 1 for p in points), [p.count for p in points]
    return [p.sum for p in points]


# -- budget ---------------------------------------------------------------------------------------


def test_remaining_tokens_decrease_by_exactly_what_each_step_used(budget_run: Recorder) -> None:
    used = [int(e.payload["tokens"]) for e in budget_run.of(K.STEP_SUCCEEDED)]
    assert len(used) == 4 and used[0] > 0
    expected, left = [], 5000
    for u in used:
        left -= u
        expected.append(float(left))
    assert hist_values(budget_run.points(M.BUDGET_TOKENS_REMAINING)) == expected


def test_remaining_cost_decreases_by_exactly_what_each_step_cost(budget_run: Recorder) -> None:
    micros = [round(e.payload["cost_usd"] * 1e6) for e in budget_run.of(K.STEP_SUCCEEDED)]
    left, expected = 1_000_000, []
    for m in micros:
        left -= m
        expected.append(left)
    got = [round(v * 1e6) for v in hist_values(budget_run.points(M.BUDGET_COST_REMAINING))]
    assert got == expected


def test_projected_burn_is_used_plus_reserved_before_each_step(budget_run: Recorder) -> None:
    reserved = [int(e.payload["tokens"]) for e in budget_run.of(K.BUDGET_RESERVED)]
    used = [int(e.payload["tokens"]) for e in budget_run.of(K.STEP_SUCCEEDED)]
    assert len(reserved) == len(used) == 4
    expected = [float(sum(used[:i]) + reserved[i]) for i in range(4)]
    assert hist_values(budget_run.points(M.BUDGET_TOKENS_PROJECTED_BURN)) == expected
    cost_reserved = [round(e.payload["cost_usd"] * 1e6) for e in budget_run.of(K.BUDGET_RESERVED)]
    cost_used = [round(e.payload["cost_usd"] * 1e6) for e in budget_run.of(K.STEP_SUCCEEDED)]
    got = [round(v * 1e6) for v in hist_values(budget_run.points(M.BUDGET_COST_PROJECTED_BURN))]
    assert got == [sum(cost_used[:i]) + cost_reserved[i] for i in range(4)]


def test_budget_limits_are_published_beside_the_burn(budget_run: Recorder) -> None:
    assert {p.value for p in budget_run.points(M.BUDGET_TOKENS_LIMIT)} == {5000}
    assert {p.value for p in budget_run.points(M.BUDGET_COST_LIMIT)} == {1.0}


def test_budget_metrics_carry_the_run_attributes(budget_run: Recorder) -> None:
    run_id = budget_run.events[0].run_id
    for name in (M.BUDGET_TOKENS_REMAINING, M.BUDGET_COST_REMAINING, M.BUDGET_TOKENS_PROJECTED_BURN,
                 M.BUDGET_COST_PROJECTED_BURN):
        attrs = [dict(p.attributes) for p in budget_run.points(name)]
        assert attrs and all(a["run_id"] == run_id for a in attrs)
        # one series per run: step_type and slo_tier would split a run's budget (and its alert)
        assert {tuple(sorted(a.items())) for a in attrs} == {(("app", "support"), ("run_id", run_id),
                                                                 ("workspace", "acme"))}


def test_no_budget_metrics_without_a_limit(flaky_run: Recorder) -> None:
    flaky = {e.run_id for e in flaky_run.events if e.app == "flaky"}
    for name in (M.BUDGET_TOKENS_REMAINING, M.BUDGET_TOKENS_PROJECTED_BURN, M.BUDGET_COST_REMAINING):
        assert not [p for p in flaky_run.points(name) if p.attributes["run_id"] in flaky]


# -- queue, retries, policies, durations ----------------------------------------------------------


def test_one_queue_lag_sample_per_step_start_in_seconds(flaky_run: Recorder) -> None:
    starts = flaky_run.of(K.STEP_STARTED)
    points = flaky_run.points(M.QUEUE_LAG_SECONDS)
    assert sum(p.count for p in points) == len(starts) > 10
    assert sum(p.sum for p in points) == pytest.approx(sum(e.payload["queue_lag_ms"] for e in starts) / 1000)
    metric = flaky_run.metric(M.QUEUE_LAG_SECONDS)
    assert metric.unit == "s"
    assert all(tuple(p.explicit_bounds) == QUEUE_LAG_BUCKETS for p in points)
    assert QUEUE_LAG_BUCKETS[0] == 0.01 and QUEUE_LAG_BUCKETS[-1] == 600.0


def test_retries_are_counted_once_per_retry(flaky_run: Recorder) -> None:
    retries = flaky_run.of(K.STEP_RETRY_SCHEDULED)
    assert len(retries) >= 3  # the seed makes several attempts fail
    running, seen = 0, []  # the running total after each transaction grows by exactly its retries
    for batch, total in zip(flaky_run.batch_events, flaky_run.batches, strict=True):
        running += sum(1 for e in batch if e.kind is K.STEP_RETRY_SCHEDULED)
        seen.append((running, sum(p.value for p in total[M.STEP_RETRIES].data.data_points)
                     if M.STEP_RETRIES in total else 0))
    assert all(want == got for want, got in seen)
    points = flaky_run.final(M.STEP_RETRIES)
    assert sum(p.value for p in points) == len(retries)
    assert {p.attributes["error.type"] for p in points} == {"http_5xx"}
    assert {p.attributes["app"] for p in points} == {"flaky"}
    assert flaky_run.metric(M.STEP_RETRIES).unit == "{retry}"


def test_policy_events_count_each_decision_by_pack_and_effect(budget_run: Recorder) -> None:
    decisions = budget_run.of(K.POLICY_DECISION)
    points = budget_run.final(M.POLICY_EVENTS)
    assert sum(p.value for p in points) == len(decisions) == 8  # pre and post for 4 steps
    assert {(p.attributes["pack"], p.attributes["effect"]) for p in points} == {("pii_redaction", "allow")}
    assert {p.attributes["hook"] for p in points} == {"pre", "post"}


def test_genai_metrics_follow_the_semantic_conventions(budget_run: Recorder) -> None:
    llm_done = [e for e in budget_run.of(K.STEP_SUCCEEDED) if e.payload["step_type"] == "llm"]
    tokens = budget_run.points(M.GENAI_TOKEN_USAGE)
    by_type = {t: sum(p.sum for p in tokens if p.attributes["gen_ai.token.type"] == t) for t in ("input", "output")}
    assert by_type == {"input": sum(e.payload["input_tokens"] for e in llm_done),
                       "output": sum(e.payload["output_tokens"] for e in llm_done)}
    assert {(p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.provider.name"],
             p.attributes["gen_ai.request.model"]) for p in tokens} == {("chat", "sim", "sim-small")}
    duration = budget_run.points(M.GENAI_OPERATION_DURATION)
    assert sum(p.count for p in duration) == len(llm_done) == 3
    assert budget_run.metric(M.GENAI_OPERATION_DURATION).unit == "s"
    assert budget_run.metric(M.GENAI_TOKEN_USAGE).unit == "{token}"


def test_run_and_step_durations(flaky_run: Recorder) -> None:
    runs = [e for e in flaky_run.events if e.kind in (K.RUN_SUCCEEDED, K.RUN_FAILED)]
    run_points = flaky_run.points(M.RUN_DURATION)
    assert sum(p.count for p in run_points) == len(runs) == 2
    assert sum(p.sum for p in run_points) == pytest.approx(sum(e.payload["duration_ms"] for e in runs) / 1000)
    attempts = flaky_run.of(K.STEP_SUCCEEDED) + flaky_run.of(K.STEP_FAILED)
    step_points = flaky_run.points(M.STEP_DURATION)
    assert sum(p.count for p in step_points) == len(attempts)
    failed = [p for p in step_points if p.attributes["status"] == "failed"]
    assert sum(p.count for p in failed) == len(flaky_run.of(K.STEP_FAILED))
    assert {p.attributes["error.type"] for p in failed} == {"http_5xx"}


# -- the run_id switch ----------------------------------------------------------------------------


def test_run_id_mode_all_puts_run_id_on_run_and_step_metrics(flaky_run: Recorder) -> None:
    for name in (M.QUEUE_LAG_SECONDS, M.STEP_RETRIES, M.POLICY_EVENTS, M.STEP_DURATION, M.RUN_DURATION):
        assert all("run_id" in p.attributes for p in flaky_run.points(name)), name


def test_run_id_mode_budget_keeps_run_id_off_queue_metrics(budget_run: Recorder) -> None:
    for name in (M.QUEUE_LAG_SECONDS, M.POLICY_EVENTS, M.STEP_DURATION, M.RUN_DURATION, M.GENAI_TOKEN_USAGE):
        points = budget_run.points(name)
        assert points and not any("run_id" in p.attributes for p in points), name


def test_run_id_mode_none_drops_run_id_everywhere(tmp_path: Path) -> None:
    rec = Recorder(RunIdMode.NONE)
    run_workload(tmp_path, [BUDGET_RUN], rec)
    names = {name for b in rec.batches for name in b}
    assert M.BUDGET_TOKENS_REMAINING in names
    for name in names:
        assert not any("run_id" in p.attributes for p in rec.points(name)), name


# -- instruments ----------------------------------------------------------------------------------


def test_every_instrument_has_its_guide_name_and_unit(flaky_run: Recorder) -> None:
    units = {
        M.BUDGET_TOKENS_REMAINING: "{token}", M.BUDGET_COST_REMAINING: "{USD}",
        M.BUDGET_TOKENS_PROJECTED_BURN: "{token}", M.BUDGET_COST_PROJECTED_BURN: "{USD}",
        M.QUEUE_LAG_SECONDS: "s", M.STEP_RETRIES: "{retry}", M.POLICY_EVENTS: "{decision}",
        M.RUN_DURATION: "s", M.STEP_DURATION: "s", M.GENAI_TOKEN_USAGE: "{token}",
        M.GENAI_OPERATION_DURATION: "s",
    }
    assert str(M.BUDGET_TOKENS_REMAINING) == "fleetforge.budget.tokens_remaining"
    assert str(M.QUEUE_LAG_SECONDS) == "fleetforge.queue.lag_seconds"
    assert str(M.STEP_RETRIES) == "fleetforge.step.retries"
    for name, unit in units.items():
        assert flaky_run.metric(name).unit == unit, name
    for name in (M.BUDGET_TOKENS_REMAINING, M.QUEUE_LAG_SECONDS, M.RUN_DURATION):
        assert isinstance(flaky_run.metric(name).data.data_points[0], HistogramDataPoint)
    assert isinstance(flaky_run.metric(M.STEP_RETRIES).data.data_points[0], NumberDataPoint)


def test_advisory_buckets_apply_without_the_views(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    run_workload(tmp_path, [BUDGET_RUN], telemetry.observer)
    lag = collect(reader)[M.QUEUE_LAG_SECONDS]
    assert tuple(lag.data.data_points[0].explicit_bounds) == QUEUE_LAG_BUCKETS


def test_a_failing_recorder_never_escapes_the_observer(budget_run: Recorder,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))

    def boom(events: Sequence[Envelope]) -> None:
        raise RuntimeError("exporter bug")

    assert telemetry.metrics is not None
    monkeypatch.setattr(telemetry.metrics, "record", boom)
    telemetry.observer(budget_run.events[:3])
    telemetry.observer(budget_run.events[:3])
    assert telemetry.errors == 2
    assert [r.message for r in caplog.records].count("telemetry observer failed (1 failures so far)") == 1
