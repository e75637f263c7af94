"""core.exporting: outbox envelopes of a real fleet become exactly the spans the state tables imply.

The tree is run -> step attempt -> (llm | tool | http unit), with guardrail spans under the attempt.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.exporting import SpanKind, TraceAssembler, TraceSpan, guardrail_span_id, unit_span_id
from fleetforge.core.ids import attempt_span_id, run_span_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.names import EventKind
from fleetforge.ports.store import OutboxRecord
from tests.exporters_support import asked_tool_calls, run_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    return run_fleet(tmp_path_factory.mktemp("fleet") / "state.db", runs=24, seed=11)


@pytest.fixture(scope="module")
def records(fleet: SqliteStore) -> list[OutboxRecord]:
    return list(fleet.iter_outbox())


def assemble(records: list[OutboxRecord], **kw: object) -> tuple[TraceAssembler, list[TraceSpan]]:
    asm = TraceAssembler(**kw)  # type: ignore[arg-type]
    spans = [s for r in records for s in asm.feed(Envelope.from_json(r.envelope), r.position)]
    return asm, spans


def test_one_span_per_run_attempt_and_decision(fleet: SqliteStore, records: list[OutboxRecord]) -> None:
    asm, spans = assemble(records)
    runs = fleet.list_runs(limit=1000)
    attempts = [a for r in runs for a in fleet.get_attempts(r.id)]
    decisions = [d for r in runs for d in fleet.get_decisions(r.id)]
    kinds = Counter(s.kind for s in spans)
    assert kinds[SpanKind.RUN] == len(runs)
    assert kinds[SpanKind.STEP] == len(attempts)
    executed = [a for a in attempts if a.status != "denied"]
    assert kinds[SpanKind.LLM] + kinds[SpanKind.TOOL] + kinds[SpanKind.HTTP] + kinds[SpanKind.AGENT] == \
        len(executed) < len(attempts)
    assert kinds[SpanKind.AGENT] > 0  # the demo's support agents
    assert kinds[SpanKind.GUARDRAIL] == len(decisions) > 0
    assert asm.open_runs == 0 and asm.oldest_hold() is None
    assert asm.stats.evicted_runs == asm.stats.dropped_attempts == asm.stats.dropped_decisions == 0
    assert len({s.span_id for s in spans}) == len(spans)


def test_ids_parents_and_times_follow_the_envelopes(fleet: SqliteStore, records: list[OutboxRecord]) -> None:
    _, spans = assemble(records)
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        run = fleet.get_run(s.run_id)
        assert run is not None and s.trace_id == run.trace_id
        assert s.start_us <= s.end_us
        if s.kind is SpanKind.RUN:
            assert s.span_id == run_span_id(s.run_id) and s.parent_span_id is None and s.lineage == ()
            assert s.start_us == run.created_us
            continue
        parent = by_id[s.parent_span_id or ""]
        assert s.start_us >= parent.start_us
        assert s.lineage[-1] == (parent.span_id, parent.start_us)
        if parent.kind is not SpanKind.LLM:  # an agent's tool call runs after the chat that asked for it
            assert s.end_us <= parent.end_us
        if s.kind is SpanKind.GUARDRAIL:
            assert parent.kind is SpanKind.STEP and s.start_us == s.end_us
            assert s.span_id in {guardrail_span_id(parent.span_id, s.inputs["hook"], s.inputs["pack"], i)
                                 for i in range(64)}
        elif s.kind is SpanKind.STEP:
            assert s.span_id == attempt_span_id(s.run_id, s.step_id or "", s.attempt)
            if parent.kind is SpanKind.RUN:
                assert s.parent_span_id == run_span_id(s.run_id)
            else:  # an agent's unit: a turn under invoke_agent, a tool call under its turn's chat
                assert s.step_id is not None and parent.step_id is not None
                agent = s.step_id.split(".t")[0]
                if ".c" in s.step_id:
                    assert parent.kind is SpanKind.LLM and s.step_id.startswith(f"{parent.step_id}.c")
                else:
                    assert parent.kind is SpanKind.AGENT and parent.step_id == agent
        else:
            assert parent.kind is SpanKind.STEP and s.span_id == unit_span_id(parent.span_id)
            assert s.start_us == parent.start_us


def test_usage_and_status_match_the_cost_ledger(fleet: SqliteStore, records: list[OutboxRecord]) -> None:
    _, spans = assemble(records)
    attempts = {(a.run_id, a.step_id, a.attempt): a for r in fleet.list_runs(limit=1000)
                for a in fleet.get_attempts(r.id)}
    for s in spans:
        if s.kind in (SpanKind.RUN, SpanKind.GUARDRAIL):
            continue
        a = attempts[(s.run_id, s.step_id, s.attempt)]
        if s.kind is not SpanKind.STEP:  # the unit: what ran, timed by the executor
            assert a.status != "denied" and s.end_us - s.start_us == a.finished_us - a.started_us
            if a.error_kind != "policy_denied":
                assert s.ok == (a.status == "succeeded")
        else:
            assert s.ok == (a.status == "succeeded")
        assert (s.usage.total_tokens if s.usage else 0) == a.tokens_used
        if s.kind is SpanKind.LLM and a.status == "succeeded":
            assert s.usage is not None
            assert (s.usage.input_tokens, s.usage.output_tokens) == (a.input_tokens, a.output_tokens)
            assert s.model == a.model and s.provider == a.provider
        if a.status == "failed":
            assert s.status_message.startswith(a.error_kind)
    for run in fleet.list_runs(limit=1000):
        root = next(s for s in spans if s.kind is SpanKind.RUN and s.run_id == run.id)
        assert root.ok == (str(run.status) == "succeeded")
        assert root.outputs["tokens"] == sum(a.tokens_used for a in fleet.get_attempts(run.id))


def test_exported_payloads_are_the_policy_processed_ones(records: list[OutboxRecord]) -> None:
    _, spans = assemble(records)
    text = json.dumps([[s.inputs, s.outputs, s.metadata] for s in spans], default=str)
    for secret in ("4111 1111 1111 1111", "@example.com", "+1 415 555 0134"):
        assert secret not in text


def test_resuming_from_the_hold_rebuilds_every_later_span(fleet: SqliteStore,
                                                          records: list[OutboxRecord]) -> None:
    half = len(records) // 2
    _, full = assemble(records)
    first, _ = assemble(records[:half])
    resume = first.oldest_hold() or records[half - 1].position

    def start(run_id: str) -> int | None:
        run = fleet.get_run(run_id)
        return run.created_us if run else None

    tail = TraceAssembler(run_start=start, start=resume)
    again = {s.span_id: s for r in records if r.position > resume
             for s in tail.feed(Envelope.from_json(r.envelope), r.position)}
    later = [s for s in full if s.position > records[half - 1].position]
    assert later and all(again[s.span_id] == s for s in later)


def test_holds_protect_open_runs_until_they_end(records: list[OutboxRecord]) -> None:
    asm = TraceAssembler()
    first_pos = records[0].position
    for r in records:
        asm.feed(Envelope.from_json(r.envelope), r.position)
        hold = asm.oldest_hold()
        if asm.open_runs:
            assert hold is not None and hold < r.position
    assert first_pos > (0, 0) and asm.oldest_hold() is None


def test_memory_stays_bounded(records: list[OutboxRecord]) -> None:
    asm, spans = assemble(records, max_runs=2, max_decisions=1)
    assert asm.open_runs <= 2
    assert asm.stats.evicted_runs > 0 and asm.stats.dropped_decisions > 0
    assert sum(1 for s in spans if s.kind is SpanKind.RUN) == len({r.run_id for r in records})


def test_late_attempts_of_a_closed_run_do_not_reopen_it(records: list[OutboxRecord]) -> None:
    envs = [Envelope.from_json(r.envelope) for r in records]
    run_id = next(e.run_id for e in envs if e.kind is EventKind.STEP_SUCCEEDED)
    mine = [e for e in envs if e.run_id == run_id]
    terminal = next(e for e in mine if e.kind in (EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED))
    last_step = [e for e in mine if e.kind is EventKind.STEP_SUCCEEDED][-1]
    reordered = [e for e in mine if e is not terminal and e is not last_step] + [terminal, last_step]
    asm = TraceAssembler()
    spans = [s for i, e in enumerate(reordered) for s in asm.feed(e, (0, i + 1))]
    assert asm.open_runs == 0
    late = spans[-1]
    assert late.span_id == last_step.trace.span_id and late.parent_span_id == run_span_id(run_id)


def test_replays_give_identical_spans(records: list[OutboxRecord]) -> None:
    _, a = assemble(records)
    _, b = assemble(records)
    assert a == b


def test_demo_fleet_fixture_is_realistic(records: list[OutboxRecord]) -> None:
    kinds = Counter(r.kind for r in records)
    for k in ("step_failed", "step_denied", "policy_decision", "run_failed", "tool_call"):
        assert kinds[k] > 0, k


def test_an_agents_tool_calls_carry_the_models_call_ids(fleet: SqliteStore, records: list[OutboxRecord]) -> None:
    _, spans = assemble(records)
    asked = asked_tool_calls(fleet)
    ran = {(s.run_id, s.step_id): (s.call_id, s.tool) for s in spans
           if s.kind is SpanKind.TOOL and (s.run_id, s.step_id or "") in asked}
    assert ran and ran == {k: v for k, v in asked.items() if k in ran}
    assert all(not s.call_id for s in spans if s.kind is SpanKind.TOOL and (s.run_id, s.step_id or "") not in asked)
