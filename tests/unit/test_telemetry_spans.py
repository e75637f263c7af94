"""Spans derived from a scripted run: the events' own trace and span ids, parentage, timestamps,
GenAI attributes on the unit spans and policy decisions as guardrail spans (SDK InMemorySpanExporter).

The tree is the one span model's (core/exporting): run -> step attempt -> llm | tool | http unit, with
guardrail spans under the attempt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fleetforge.adapters.readers.telemetry import EventIdGenerator, SpanRecorder, Telemetry
from fleetforge.core.exporting import unit_span_id
from fleetforge.core.ids import attempt_span_id, run_span_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.names import TERMINAL_ATTEMPT_KINDS
from fleetforge.domain.names import EventKind as K
from tests.unit.test_telemetry_metrics import BUDGET_RUN, llm, run_workload

RETRY = {"max_attempts": 2, "retry_backoff_ms": 1}
# With seed 3 the simulator fails attempt 1 of "f3" only, and every attempt of "f1".
FLAKY = {"app": "flaky", "seed": 3, "steps": [
    llm("f3", fail_rate=0.6, failure_kinds=["http_5xx"]) | {"execution": RETRY},
    {"id": "w", "type": "tool", "depends_on": ["f3"], "inputs": {"tool": "weather", "args": {"city": "Oslo"}}},
]}
DOOMED = {"app": "doomed", "seed": 3,
          "steps": [llm("f1", fail_rate=0.6, failure_kinds=["http_5xx"]) | {"execution": RETRY}]}
DRAINED = {"app": "drained", "budget": {"tokens": 200}, "steps": [llm("big", output_tokens=150), llm("next", "big")]}
PII = {"app": "pii", "packs": [{"name": "pii_redaction"}],
       "steps": [llm("mail", prompt="write to jane.doe@example.com about the outage")]}


class Captured:
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.events: list[Envelope] = []
        self.spans: list[ReadableSpan] = list(exporter.get_finished_spans())

    def by_id(self) -> dict[int, ReadableSpan]:
        return {s.context.span_id: s for s in self.spans}


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=EventIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    events: list[Envelope] = []

    def observer(batch: list[Envelope]) -> None:
        events.extend(batch)
        telemetry.observer(batch)

    run_workload(tmp_path_factory.mktemp("spans"), [BUDGET_RUN, FLAKY, DOOMED, DRAINED, PII], observer, concurrency=4)
    assert telemetry.errors == 0
    assert telemetry.spans is not None and telemetry.spans.open_attempts == 0
    got = Captured(exporter)
    got.events = events
    return got


def h(value: str) -> int:
    return int(value, 16)


def kind(span: ReadableSpan) -> str:
    assert span.attributes is not None
    return str(span.attributes["fleetforge.span.kind"])


def test_one_root_span_per_run_with_the_events_ids(captured: Captured) -> None:
    terminal = [e for e in captured.events if e.kind in (K.RUN_SUCCEEDED, K.RUN_FAILED, K.RUN_CANCELED)]
    runs = [s for s in captured.spans if kind(s) == "run"]
    assert len(runs) == len(terminal) == 5
    for e in terminal:
        span = next(s for s in runs if s.context.span_id == h(run_span_id(e.run_id)))
        assert span.parent is None
        assert span.context.trace_id == h(e.trace.trace_id)
        assert span.context.span_id == h(e.trace.span_id)
        assert span.end_time == e.occurred_us * 1000
        assert span.end_time - span.start_time == round(e.payload["duration_ms"] * 1000) * 1000
        assert span.attributes["run_id"] == e.run_id and span.attributes["status"] == e.payload["status"]


def test_one_child_span_per_attempt_with_the_events_ids(captured: Captured) -> None:
    ends = [e for e in captured.events if e.kind in TERMINAL_ATTEMPT_KINDS]
    spans = captured.by_id()
    for e in ends:
        assert e.step_id is not None
        span = spans[h(attempt_span_id(e.run_id, e.step_id, e.attempt))]
        assert span.context.span_id == h(e.trace.span_id)
        assert span.context.trace_id == h(e.trace.trace_id)
        assert span.parent is not None and span.parent.span_id == h(run_span_id(e.run_id))
        assert span.attributes["attempt"] == e.attempt and span.attributes["step_id"] == e.step_id
    attempt_spans = [s for s in captured.spans if kind(s) == "step"]
    assert len(attempt_spans) == len(ends)


def test_every_event_trace_context_names_an_emitted_span(captured: Captured) -> None:
    emitted = {(s.context.trace_id, s.context.span_id) for s in captured.spans}
    for e in captured.events:
        if e.step_id is None or (e.attempt > 0 and e.kind not in (K.STEP_QUEUED, K.STEP_SKIPPED, K.STEP_DEFERRED)):
            assert (h(e.trace.trace_id), h(e.trace.span_id)) in emitted, e.kind
            assert e.to_dict()["trace"]["traceparent"] == f"00-{e.trace.trace_id}-{e.trace.span_id}-01"


def test_attempt_spans_take_their_times_from_the_events(captured: Captured) -> None:
    spans = captured.by_id()
    for start in [e for e in captured.events if e.kind is K.STEP_STARTED]:
        assert start.step_id is not None
        end = next(e for e in captured.events if e.kind in (K.STEP_SUCCEEDED, K.STEP_FAILED)
                   and (e.run_id, e.step_id, e.attempt) == (start.run_id, start.step_id, start.attempt))
        span = spans[h(start.trace.span_id)]
        assert span.start_time == start.occurred_us * 1000 and span.end_time == end.occurred_us * 1000
        assert span.attributes["worker"] == "w1"
        unit = spans[h(unit_span_id(start.trace.span_id))]  # what the executor ran, timed by it
        assert unit.start_time == span.start_time
        assert unit.end_time - unit.start_time == round(end.payload["duration_ms"] * 1000) * 1000


def test_llm_attempts_carry_genai_attributes(captured: Captured) -> None:
    for e in [e for e in captured.events if e.kind is K.STEP_SUCCEEDED and e.payload["step_type"] == "llm"]:
        span = captured.by_id()[h(unit_span_id(e.trace.span_id))]
        assert span.parent is not None and span.parent.span_id == h(e.trace.span_id)
        assert span.name == "chat sim-small" and span.kind is SpanKind.CLIENT
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert span.attributes["gen_ai.provider.name"] == "sim"
        assert span.attributes["gen_ai.request.model"] == "sim-small"
        assert span.attributes["gen_ai.usage.input_tokens"] == e.payload["input_tokens"]
        assert span.attributes["gen_ai.usage.output_tokens"] == e.payload["output_tokens"]


def test_tool_steps_get_a_tool_span_under_their_attempt(captured: Captured) -> None:
    calls = [e for e in captured.events if e.kind is K.TOOL_CALL]
    assert {e.payload["tool"] for e in calls} == {"calculator", "weather"}
    spans = captured.by_id()
    for e in calls:
        span = spans[h(unit_span_id(e.trace.span_id))]
        assert span.name == f"execute_tool {e.payload['tool']}"
        assert span.parent is not None and span.parent.span_id == h(e.trace.span_id)
        assert span.context.trace_id == h(e.trace.trace_id)
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["gen_ai.tool.name"] == e.payload["tool"]
        attempt = spans[h(e.trace.span_id)]
        assert attempt.name == e.step_id and attempt.start_time <= span.start_time
        assert span.end_time <= attempt.end_time == e.occurred_us * 1000


def test_policy_decisions_are_guardrail_spans_with_verdict_and_raw_result(captured: Captured) -> None:
    decisions = [e for e in captured.events if e.kind is K.POLICY_DECISION]
    guards = [s for s in captured.spans if kind(s) == "guardrail"]
    assert len(guards) == len(decisions)
    for d in decisions:
        match = [g for g in guards if g.parent is not None and g.parent.span_id == h(d.trace.span_id)
                 and g.start_time == g.end_time == d.occurred_us * 1000 and g.attributes["hook"] == d.payload["hook"]]
        assert len(match) == 1
        attrs = match[0].attributes
        assert attrs["effect"] == d.payload["effect"] and attrs["effect"] in ("allow", "deny", "modify")
        assert attrs["pack"] == d.payload["pack"] and match[0].name == d.payload["pack"]
        assert json.loads(str(attrs["raw"])) == d.payload["raw"]
    assert "modify" in {d.payload["effect"] for d in decisions}  # the PII run's e-mail was redacted


def test_failed_attempts_are_errors_that_say_whether_a_retry_follows(captured: Captured) -> None:
    failures = [e for e in captured.events if e.kind is K.STEP_FAILED]
    assert sorted((e.step_id, e.attempt, e.payload["final"]) for e in failures) == [
        ("f1", 1, False), ("f1", 2, True), ("f3", 1, False)]
    spans = captured.by_id()
    for f in failures:
        span = spans[h(f.trace.span_id)]
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "http_5xx"
        assert span.attributes["final"] is f.payload["final"]
        assert [ev.name for ev in span.events] == ["exception"]


def test_denied_attempts_and_failed_runs_are_errors(captured: Captured) -> None:
    denied = next(e for e in captured.events if e.kind is K.STEP_DENIED)
    span = captured.by_id()[h(denied.trace.span_id)]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "budget_exceeded"
    run = captured.by_id()[h(run_span_id(denied.run_id))]
    assert run.status.status_code is StatusCode.ERROR and run.attributes["error.type"] == "budget_exceeded"


def test_the_provider_must_use_the_event_id_generator() -> None:
    with pytest.raises(ConfigError, match="EventIdGenerator"):
        SpanRecorder(TracerProvider())


def test_the_id_generator_stays_random_outside_presets() -> None:
    ids = EventIdGenerator()
    assert ids.generate_span_id() != ids.generate_span_id()
    with ids.preset(7, 9):
        assert (ids.generate_trace_id(), ids.generate_span_id()) == (7, 9)
    assert ids.generate_span_id() != 9


def test_open_attempts_are_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    provider = TracerProvider(id_generator=EventIdGenerator())
    recorder = SpanRecorder(provider, max_open=2)
    events: list[Envelope] = []
    run_workload(tmp_path, [BUDGET_RUN], events.extend)
    starts = [e for e in events if e.kind is K.STEP_STARTED]
    recorder.record(starts)
    assert recorder.open_attempts == 2
    assert "more than 2 attempts open in a run" in caplog.text


def test_budget_reservations_and_settlements_are_attempt_attributes(captured: Captured) -> None:
    reserved = [e for e in captured.events if e.kind is K.BUDGET_RESERVED and e.payload["tokens_limit"]]
    assert reserved
    spans = captured.by_id()
    for r in reserved:
        span = spans[h(r.trace.span_id)]
        assert span.attributes["fleetforge.budget.tokens_reserved"] == r.payload["tokens"]
        settled = next(e for e in captured.events if e.kind is K.BUDGET_RECONCILED
                       and (e.run_id, e.step_id, e.attempt) == (r.run_id, r.step_id, r.attempt))
        assert span.attributes["fleetforge.budget.tokens_left"] == settled.payload["tokens_remaining"]
