"""One fleet, one span model, every backend: the OTel SDK and the LangSmith, Langfuse and Phoenix encoders
show the same tree (span id, parent, name) with the same start and end times, and agree on each kind."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleetforge.adapters.readers.telemetry import EventIdGenerator, SpanRecorder
from fleetforge.adapters.readers.traces.discovery import ExporterConfig, discover
from fleetforge.adapters.readers.traces.langfuse import LangfusePlatform
from fleetforge.adapters.readers.traces.langsmith import LangSmithPlatform, langsmith_run, run_uuid
from fleetforge.adapters.readers.traces.phoenix import PhoenixPlatform
from fleetforge.adapters.readers.traces.platform_registry import platform_for
from fleetforge.core.exporting import SpanKind, TraceAssembler, TraceSpan
from fleetforge.domain.envelope import Envelope
from fleetforge.ports.store import OutboxRecord
from tests.exporters_support import attributes, multipart_runs, otlp_spans, run_fleet, write_manifests

Row = tuple[str, str | None, str, int, int]  # span id, parent id, name, start us, end us
_EPOCH = datetime(1970, 1, 1)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[OutboxRecord]:
    return list(run_fleet(tmp_path_factory.mktemp("fleet") / "state.db", runs=16, seed=5).iter_outbox())


@pytest.fixture(scope="module")
def model(records: list[OutboxRecord]) -> list[TraceSpan]:
    asm = TraceAssembler()
    return [s for r in records for s in asm.feed(Envelope.from_json(r.envelope), r.position)]


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExporterConfig]:
    folder = write_manifests(tmp_path_factory.mktemp("plugins"), ["langsmith", "langfuse", "phoenix"])
    found = discover({"FLEETFORGE_TRACE_EXPORTERS": "langsmith,langfuse,phoenix", "LANGSMITH_API_KEY": "k",
                      "LANGFUSE_PUBLIC_KEY": "p", "LANGFUSE_SECRET_KEY": "s", "PHOENIX_API_KEY": "x"}, folder)
    return {c.name: c for c in found.active}


GENAI_OP = {"agent": "invoke_agent", "llm": "chat", "tool": "execute_tool", "http": "execute_tool"}


def tool_call_id(span: TraceSpan) -> str | None:
    """The call id a tool span must carry: the model's, for an agent's tool call."""
    return span.call_id or None if span.kind is SpanKind.TOOL else None


def rows_of_model(spans: list[TraceSpan]) -> dict[str, tuple[Row, str]]:
    return {s.span_id: ((s.span_id, s.parent_span_id, s.name, s.start_us, s.end_us), str(s.kind)) for s in spans}


def test_the_tree_is_run_attempt_unit_with_guardrails_under_the_attempt(model: list[TraceSpan]) -> None:
    by_id = {s.span_id: s for s in model}
    assert {SpanKind.RUN, SpanKind.STEP, SpanKind.LLM, SpanKind.TOOL, SpanKind.GUARDRAIL} <= {s.kind for s in model}
    for s in model:
        if s.parent_span_id is None:
            assert s.kind is SpanKind.RUN
            continue
        parent = by_id[s.parent_span_id]
        if s.kind is SpanKind.STEP and parent.kind is not SpanKind.RUN:  # an agent's unit: agent -> LLM -> tool
            assert (parent.kind, ".c" in (s.step_id or "")) in ((SpanKind.AGENT, False), (SpanKind.LLM, True)), s
        else:
            assert parent.kind is (SpanKind.RUN if s.kind is SpanKind.STEP else SpanKind.STEP), s
        assert parent.start_us <= s.start_us <= s.end_us, s
        assert s.end_us <= parent.end_us or parent.kind is SpanKind.LLM, s  # a tool call runs after its chat


def test_sdk_and_every_platform_show_the_same_spans_and_times(records: list[OutboxRecord], model: list[TraceSpan],
                                                              configs: dict[str, ExporterConfig]) -> None:
    want = rows_of_model(model)
    rows = {sid: row for sid, (row, _) in want.items()}
    by_id = {s.span_id: s for s in model}

    # (a) the OTel SDK, fed the same events in outbox order, one transaction-sized batch at a time
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=EventIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = SpanRecorder(provider)
    envelopes = [Envelope.from_json(r.envelope) for r in records]
    for i in range(0, len(envelopes), 7):
        recorder.record(envelopes[i:i + 7])
    sdk: dict[str, Row] = {}
    for s in exporter.get_finished_spans():
        assert s.context is not None and s.start_time is not None and s.end_time is not None
        sid = f"{s.context.span_id:016x}"
        parent = f"{s.parent.span_id:016x}" if s.parent is not None else None
        sdk[sid] = (sid, parent, s.name, s.start_time // 1000, s.end_time // 1000)
        assert s.attributes is not None and s.attributes["fleetforge.span.kind"] == want[sid][1]
    assert sdk == rows

    # (b) Phoenix and Langfuse: OTLP bodies
    labels: dict[str, dict[str, Any]] = {
        "phoenix": {"run": "CHAIN", "step": "CHAIN", "llm": "LLM", "tool": "TOOL", "http": "TOOL",
                    "agent": "AGENT", "guardrail": "GUARDRAIL"},
        "langfuse": {"run": "chain", "step": "span", "llm": "generation", "tool": "tool", "http": "tool",
                     "agent": "agent", "guardrail": "guardrail"},
    }
    label_key = {"phoenix": "openinference.span.kind", "langfuse": "langfuse.observation.type"}
    for name, cls in (("phoenix", PhoenixPlatform), ("langfuse", LangfusePlatform)):
        platform = platform_for(configs[name])
        assert isinstance(platform, cls)
        got: dict[str, Row] = {}
        for _, pb in otlp_spans(platform.encode(model).content):
            sid = pb.span_id.hex()
            got[sid] = (sid, pb.parent_span_id.hex() or None, pb.name, pb.start_time_unix_nano // 1000,
                        pb.end_time_unix_nano // 1000)
            attrs = attributes(pb)
            assert attrs[label_key[name]] == labels[name][want[sid][1]], name
            assert attrs.get("gen_ai.operation.name") == GENAI_OP.get(want[sid][1]), name
            assert attrs.get("gen_ai.tool.call.id") == tool_call_id(by_id[sid]), name
        assert got == rows, name

    # (c) LangSmith: runs with UUID v7 ids derived from (trace, span, start)
    platform = platform_for(configs["langsmith"])
    assert isinstance(platform, LangSmithPlatform)
    req = platform.encode(model)
    runs = multipart_runs(req.headers["Content-Type"], req.content)
    back = {str(run_uuid(s.trace_id, s.span_id, s.start_us)): s.span_id for s in model}
    ls: dict[str, Row] = {}
    for run in runs:
        sid = back[run["id"]]
        parent = back[run["parent_run_id"]] if "parent_run_id" in run else None
        ls[sid] = (sid, parent, run["name"], _us(run["start_time"]), _us(run["end_time"]))
        assert run["tags"][-1] == want[sid][1]
    assert ls == rows
    assert runs == [langsmith_run(s, platform.project) for s in model]
    for run in runs:
        meta, span = run["extra"]["metadata"], by_id[back[run["id"]]]
        assert meta.get("gen_ai.operation.name") == GENAI_OP.get(str(span.kind))
        assert meta.get("gen_ai.tool.call.id") == tool_call_id(span)
    assert any(s.call_id for s in model)  # the demo's agents called tools


def _us(iso: str) -> int:
    delta = datetime.fromisoformat(iso).replace(tzinfo=None) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def test_an_unknown_platform_name_is_never_another_platform(configs: dict[str, ExporterConfig],
                                                            tmp_path: Path) -> None:
    from dataclasses import replace

    from fleetforge.domain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown trace platform 'datadog' \(known: langfuse, langsmith, phoenix\)"):
        platform_for(replace(configs["phoenix"], name="datadog"))
    write_manifests(tmp_path, ["datadog"])
    found = discover({"FLEETFORGE_TRACE_EXPORTERS": "datadog,phoenix", "PHOENIX_API_KEY": "x"}, tmp_path)
    assert not found.active
    reasons = [s.reason for s in found.skipped]
    assert "unknown (known: langfuse, langsmith, phoenix)" in reasons[0] and "no manifest" in reasons[1]
