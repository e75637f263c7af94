"""The OpenTelemetry instruments FleetForge records, their units and their histogram buckets."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, ObservableCounter, Observation, _Gauge
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from fleetforge.domain.names import Metric

__all__ = [
    "BUCKETS",
    "BUDGET_FIELDS",
    "DURATION_BUCKETS",
    "GENAI_DURATION_BUCKETS",
    "GENAI_TOKEN_BUCKETS",
    "INSTRUMENT_METRICS",
    "METER_NAME",
    "QUEUE_LAG_BUCKETS",
    "Callback",
    "RunInstruments",
    "metric_views",
]

Callback = Callable[[CallbackOptions], Iterable[Observation]]

METER_NAME: Final = "fleetforge"

QUEUE_LAG_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds, 10 ms to 10 min: p95 of `fleetforge_queue_lag_seconds_bucket` stays meaningful at both ends."""
DURATION_BUCKETS: Final = (*QUEUE_LAG_BUCKETS, 1800.0, 3600.0)
GENAI_DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                                 40.96, 81.92)  # the GenAI semantic conventions' advice
GENAI_TOKEN_BUCKETS: Final = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                              1048576.0, 4194304.0, 16777216.0, 67108864.0)
BUDGET_BUCKETS: Final[tuple[float, ...]] = ()
"""Budget histograms are read through _sum/_count; one +Inf bucket keeps per-run series few."""

BUCKETS: Final[dict[Metric, tuple[float, ...]]] = {
    Metric.QUEUE_LAG_SECONDS: QUEUE_LAG_BUCKETS,
    Metric.RUN_DURATION: DURATION_BUCKETS,
    Metric.STEP_DURATION: DURATION_BUCKETS,
    Metric.DELIVERY_LATENCY: QUEUE_LAG_BUCKETS,
    Metric.DELIVERY_BATCH_SIZE: (1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0),
    Metric.GENAI_OPERATION_DURATION: GENAI_DURATION_BUCKETS,
    Metric.GENAI_TOKEN_USAGE: GENAI_TOKEN_BUCKETS,
    Metric.BUDGET_TOKENS_REMAINING: BUDGET_BUCKETS,
    Metric.BUDGET_COST_REMAINING: BUDGET_BUCKETS,
    Metric.BUDGET_TOKENS_PROJECTED_BURN: BUDGET_BUCKETS,
    Metric.BUDGET_COST_PROJECTED_BURN: BUDGET_BUCKETS,
}


def metric_views() -> list[View]:
    """One View per histogram fixing its bucket boundaries; pass them to every MeterProvider."""
    return [
        View(instrument_name=str(name), meter_name=METER_NAME,
             aggregation=ExplicitBucketHistogramAggregation(boundaries=bounds))
        for name, bounds in BUCKETS.items()
    ]


def _histogram(meter: Meter, name: Metric, unit: str, description: str) -> Histogram:
    # The advisory boundaries repeat the View, for providers built without `metric_views()`.
    return meter.create_histogram(str(name), unit=unit, description=description,
                                  explicit_bucket_boundaries_advisory=list(BUCKETS[name]))


@dataclass(frozen=True, slots=True)
class RunInstruments:
    """The instruments fed by run and step events."""

    tokens_remaining: Histogram
    cost_remaining: Histogram
    tokens_projected_burn: Histogram
    cost_projected_burn: Histogram
    tokens_limit: _Gauge
    cost_limit: _Gauge
    queue_lag: Histogram
    retries: ObservableCounter
    policy_events: ObservableCounter
    run_duration: Histogram
    step_duration: Histogram
    genai_tokens: Histogram
    genai_duration: Histogram

    @classmethod
    def create(cls, meter: Meter, *, retries: Callback, policy_events: Callback,
               budget_meter: Meter | None = None) -> RunInstruments:
        """The instruments; the two counters are asynchronous, reporting the totals their callbacks return.
        The per-run budget instruments are made on `budget_meter` when given (so they can be replaced)."""
        return cls(
            **_budget_instruments(budget_meter or meter),
            queue_lag=_histogram(meter, Metric.QUEUE_LAG_SECONDS, "s",
                                 "How long a step waited in the scheduler queue before a worker claimed it"),
            retries=meter.create_observable_counter(
                str(Metric.STEP_RETRIES), [retries], unit="{retry}",
                description="Retry attempts scheduled after failed attempts"),
            policy_events=meter.create_observable_counter(
                str(Metric.POLICY_EVENTS), [policy_events], unit="{decision}",
                description="Guardrail decisions by pack and effect"),
            run_duration=_histogram(meter, Metric.RUN_DURATION, "s", "Run submission to completion"),
            step_duration=_histogram(meter, Metric.STEP_DURATION, "s", "Duration of one step attempt"),
            genai_tokens=_histogram(meter, Metric.GENAI_TOKEN_USAGE, "{token}",
                                    "Input and output tokens used by LLM calls"),
            genai_duration=_histogram(meter, Metric.GENAI_OPERATION_DURATION, "s", "Duration of LLM calls"),
        )

    def with_budget(self, budget_meter: Meter) -> RunInstruments:
        """These instruments with the per-run budget ones made anew on `budget_meter`."""
        return replace(self, **_budget_instruments(budget_meter))


def _budget_instruments(b: Meter) -> dict[str, Any]:
    return {
        "tokens_remaining": _histogram(b, Metric.BUDGET_TOKENS_REMAINING, "{token}",
                                       "Tokens left under the tightest limit after each step of a budgeted run"),
        "cost_remaining": _histogram(b, Metric.BUDGET_COST_REMAINING, "{USD}",
                                     "USD left under the tightest limit after each step of a budgeted run"),
        "tokens_projected_burn": _histogram(b, Metric.BUDGET_TOKENS_PROJECTED_BURN, "{token}",
                                            "Tokens used + reserved, recorded before each step executes"),
        "cost_projected_burn": _histogram(b, Metric.BUDGET_COST_PROJECTED_BURN, "{USD}",
                                          "USD used + reserved, recorded before each step executes"),
        "tokens_limit": b.create_gauge(str(Metric.BUDGET_TOKENS_LIMIT), unit="{token}",
                                       description="The tightest token limit of the run"),
        "cost_limit": b.create_gauge(str(Metric.BUDGET_COST_LIMIT), unit="{USD}",
                                     description="The tightest cost limit of the run"),
    }


BUDGET_FIELDS: Final = ("tokens_remaining", "cost_remaining", "tokens_projected_burn", "cost_projected_burn",
                        "tokens_limit", "cost_limit")
"""The RunInstruments fields that carry `run_id` (per-run series)."""

INSTRUMENT_METRICS: Final[dict[str, Metric]] = {
    "tokens_remaining": Metric.BUDGET_TOKENS_REMAINING, "cost_remaining": Metric.BUDGET_COST_REMAINING,
    "tokens_projected_burn": Metric.BUDGET_TOKENS_PROJECTED_BURN,
    "cost_projected_burn": Metric.BUDGET_COST_PROJECTED_BURN, "tokens_limit": Metric.BUDGET_TOKENS_LIMIT,
    "cost_limit": Metric.BUDGET_COST_LIMIT, "queue_lag": Metric.QUEUE_LAG_SECONDS,
    "run_duration": Metric.RUN_DURATION, "step_duration": Metric.STEP_DURATION,
    "genai_tokens": Metric.GENAI_TOKEN_USAGE, "genai_duration": Metric.GENAI_OPERATION_DURATION,
}
"""RunInstruments field -> metric name, for the histograms and gauges."""

