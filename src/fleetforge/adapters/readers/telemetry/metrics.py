"""Turns committed outbox envelopes into OpenTelemetry metric points."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from opentelemetry.metrics import Meter

from fleetforge.adapters.readers.telemetry.instruments import BUCKETS, BUDGET_FIELDS, INSTRUMENT_METRICS, RunInstruments
from fleetforge.adapters.readers.telemetry.ledger import (
    GaugeTally,
    HistogramTally,
    Ledger,
    TalliedGauge,
    TalliedHistogram,
    Tally,
)
from fleetforge.adapters.readers.telemetry.settings import RunIdMode
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.names import Attr, Metric
from fleetforge.domain.names import EventKind as K

__all__ = ["GENAI_OPERATION", "MetricsRecorder", "Tally"]

GENAI_OPERATION: Final = "chat"
MAX_LIMITS_SEEN: Final = 16_384
Attrs = dict[str, str | int | float | bool]
AttrKey = tuple[tuple[str, str | int | float | bool], ...]

# Plain str keys: hashing a StrEnum member runs Python code, and attributes are hashed per record.
_WORKSPACE, _APP, _SLO_TIER, _STEP_TYPE, _RUN_ID = (
    str(Attr.WORKSPACE), str(Attr.APP), str(Attr.SLO_TIER), str(Attr.STEP_TYPE), str(Attr.RUN_ID))
_ERROR, _STATUS, _PACK, _EFFECT, _HOOK = (
    str(Attr.ERROR_KIND), str(Attr.STATUS), str(Attr.PACK), str(Attr.EFFECT), str(Attr.HOOK))
_OPERATION, _PROVIDER, _MODEL, _TOKEN_TYPE = (
    str(Attr.GENAI_OPERATION), str(Attr.GENAI_PROVIDER), str(Attr.GENAI_MODEL), str(Attr.GENAI_TOKEN_TYPE))


def _num(payload: dict[str, Any], key: str) -> float:
    value = payload.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class MetricsRecorder:
    """Records the metrics of each event. Which metrics carry `run_id` follows `run_id_mode`; budget metrics
    carry the run's attributes (run_id, workspace, app), the others also step_type and slo_tier.

    Budget metrics are recorded per dimension while that dimension has a limit: token metrics when a
    token limit applies, cost metrics when a cost limit applies.
    """

    def __init__(self, meter: Meter, *, run_id_mode: RunIdMode = RunIdMode.BUDGET,
                 budget_meter: Meter | None = None, ledger: Ledger | None = None,
                 visible: Callable[[], bool] = lambda: True) -> None:
        self.retries = Tally(visible)
        self.policy_events = Tally(visible)
        self.instruments = RunInstruments.create(meter, retries=self.retries.observe,
                                                 policy_events=self.policy_events.observe,
                                                 budget_meter=budget_meter)
        self.ledger = ledger
        if ledger is not None:  # keep every value, so a new lease holder can continue the series
            ledger.counters[str(Metric.STEP_RETRIES)] = self.retries
            ledger.counters[str(Metric.POLICY_EVENTS)] = self.policy_events
            self.instruments = self._tallied(self.instruments, INSTRUMENT_METRICS)
        self.run_id_mode = run_id_mode
        self._run_id_all = run_id_mode is RunIdMode.ALL
        self._run_id_budget = run_id_mode is RunIdMode.BUDGET
        self._limits: dict[tuple[Any, ...], tuple[float, float]] = {}  # last limit set per gauge series
        self._handlers: dict[K, Callable[[Envelope], None]] = {
            K.BUDGET_RESERVED: self._reserved,
            K.BUDGET_RECONCILED: self._reconciled,
            K.STEP_STARTED: self._started,
            K.STEP_RETRY_SCHEDULED: self._retry,
            K.POLICY_DECISION: self._policy,
            K.STEP_SUCCEEDED: self._attempt_done,
            K.STEP_FAILED: self._attempt_done,
            K.RUN_SUCCEEDED: self._run_done,
            K.RUN_FAILED: self._run_done,
            K.RUN_CANCELED: self._run_done,
        }

    def _tallied(self, i: RunInstruments, fields: Any) -> RunInstruments:
        assert self.ledger is not None
        wrapped: dict[str, Any] = {}
        for f in fields:
            name = str(INSTRUMENT_METRICS[f])
            sdk = getattr(i, f)
            if f.endswith("_limit"):
                wrapped[f] = TalliedGauge(sdk, self.ledger.gauges.setdefault(name, GaugeTally()))
            else:
                bounds = BUCKETS[INSTRUMENT_METRICS[f]]
                wrapped[f] = TalliedHistogram(sdk, self.ledger.histograms.setdefault(name, HistogramTally(bounds)))
        return replace(i, **wrapped)

    def replay(self, fields: Sequence[str] = tuple(INSTRUMENT_METRICS)) -> None:
        """Record the ledger's tallies into the current SDK instruments (after a takeover or a rebind)."""
        for f in fields:
            inst = getattr(self.instruments, f)
            if isinstance(inst, TalliedHistogram):
                inst.tally.replay(inst.sdk.record)
            elif isinstance(inst, TalliedGauge):
                inst.tally.replay(inst.sdk.set)

    def rebind_budget(self, budget_meter: Meter) -> None:
        """Make the per-run budget instruments anew on `budget_meter` and replay what the ledger still holds
        of them (series of runs it forgot are gone)."""
        fresh = self.instruments.with_budget(budget_meter)
        self.instruments = self._tallied(fresh, BUDGET_FIELDS) if self.ledger is not None else fresh
        self._limits.clear()
        self.replay(BUDGET_FIELDS)

    def record(self, events: Sequence[Envelope]) -> None:
        """Record every metric the events imply."""
        handlers = self._handlers
        for event in events:
            handler = handlers.get(event.kind)
            if handler is not None:
                handler(event)

    # -- attributes ---------------------------------------------------------------------------

    def _attrs(self, e: Envelope) -> Attrs:
        p = e.payload
        attrs: Attrs = {_WORKSPACE: e.workspace, _APP: e.app, _SLO_TIER: p.get("slo_tier", "")}
        if e.step_id is not None:
            attrs[_STEP_TYPE] = p.get("step_type", "")
        if self._run_id_all:
            attrs[_RUN_ID] = e.run_id
        return attrs

    def _budget_attrs(self, e: Envelope) -> Attrs:
        """A budget belongs to the run: one series per run (step type and SLO tier would split it, and
        the guide's per-run alert would fire once per split)."""
        if self._run_id_all or self._run_id_budget:
            return {_WORKSPACE: e.workspace, _APP: e.app, _RUN_ID: e.run_id}
        return {_WORKSPACE: e.workspace, _APP: e.app}

    # -- handlers -----------------------------------------------------------------------------

    def _reserved(self, e: Envelope) -> None:
        p, i = e.payload, self.instruments
        attrs = self._budget_attrs(e)
        tokens_limit, cost_limit = _num(p, "tokens_limit"), _num(p, "cost_limit_usd")
        if tokens_limit > 0 and "tokens_projected_burn" in p:
            i.tokens_projected_burn.record(_num(p, "tokens_projected_burn"), attrs)
        if cost_limit > 0 and "cost_projected_burn_usd" in p:
            i.cost_projected_burn.record(_num(p, "cost_projected_burn_usd"), attrs)
        key = tuple(attrs.values())
        if self._limits.get(key) != (tokens_limit, cost_limit):  # a gauge keeps its last value: set on change
            if len(self._limits) >= MAX_LIMITS_SEEN:
                self._limits.clear()
            self._limits[key] = (tokens_limit, cost_limit)
            if tokens_limit > 0:
                i.tokens_limit.set(tokens_limit, attrs)
            if cost_limit > 0:
                i.cost_limit.set(cost_limit, attrs)

    def _reconciled(self, e: Envelope) -> None:
        p, i = e.payload, self.instruments
        attrs = self._budget_attrs(e)
        if _num(p, "tokens_limit") > 0:
            i.tokens_remaining.record(_num(p, "tokens_remaining"), attrs)
        if _num(p, "cost_limit_usd") > 0:
            i.cost_remaining.record(_num(p, "cost_remaining_usd"), attrs)

    def _started(self, e: Envelope) -> None:
        self.instruments.queue_lag.record(_num(e.payload, "queue_lag_ms") / 1000, self._attrs(e))

    def _key(self, e: Envelope, *extra: tuple[str, str]) -> AttrKey:
        """`_attrs` as a tuple of pairs (the counters' key), with `extra` pairs appended."""
        p = e.payload
        key: AttrKey = ((_WORKSPACE, e.workspace), (_APP, e.app), (_SLO_TIER, p.get("slo_tier", "")),
                        (_STEP_TYPE, p.get("step_type", "")), *extra)
        return ((_RUN_ID, e.run_id), *key) if self._run_id_all else key

    def _retry(self, e: Envelope) -> None:
        self.retries.add(self._key(e, (_ERROR, e.payload.get("error_kind", ""))))

    def _policy(self, e: Envelope) -> None:
        p = e.payload
        self.policy_events.add(self._key(e, (_PACK, p.get("pack", "")), (_EFFECT, p.get("effect", "")),
                                         (_HOOK, p.get("hook", ""))))

    def _attempt_done(self, e: Envelope) -> None:
        p, i = e.payload, self.instruments
        ok = e.kind is K.STEP_SUCCEEDED
        seconds = _num(p, "duration_ms") / 1000
        attrs = self._attrs(e)
        attrs[_STATUS] = "succeeded" if ok else "failed"
        if not ok:
            attrs[_ERROR] = p.get("error_kind", "")
        i.step_duration.record(seconds, attrs)
        if p.get("step_type") != "llm":
            return
        # The GenAI metrics carry workspace and app beside the semantic-convention attributes (fewer
        # attributes per measurement: the SDK's cost grows with each).
        genai: Attrs = {_WORKSPACE: e.workspace, _APP: e.app}
        if self._run_id_all:
            genai[_RUN_ID] = e.run_id
        genai[_OPERATION] = GENAI_OPERATION
        genai[_PROVIDER] = p.get("provider", "")
        genai[_MODEL] = p.get("model") or p.get("tool", "")
        if not ok:
            genai[_ERROR] = p.get("error_kind", "")
        i.genai_duration.record(seconds, genai)
        if ok:
            i.genai_tokens.record(_num(p, "input_tokens"), {**genai, _TOKEN_TYPE: "input"})
            i.genai_tokens.record(_num(p, "output_tokens"), {**genai, _TOKEN_TYPE: "output"})

    def _run_done(self, e: Envelope) -> None:
        p = e.payload
        attrs = self._attrs(e)
        attrs[_STATUS] = p.get("status", "")
        if e.kind is K.RUN_FAILED:
            attrs[_ERROR] = p.get("error_kind", "")
        self.instruments.run_duration.record(_num(p, "duration_ms") / 1000, attrs)
        if self.ledger is not None:
            self.ledger.run_ended(e.run_id, e.occurred_us / 1e6)
