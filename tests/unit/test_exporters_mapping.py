"""Per-platform mapping of a real fleet's spans, checked against the platforms' published models.

The `langsmith` and `langfuse` packages (dev extras) ship those models; they are used here only.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

import pytest

from fleetforge.adapters.readers.traces.discovery import discover
from fleetforge.adapters.readers.traces.langsmith import LangSmithPlatform, langsmith_run, multipart_body, run_uuid
from fleetforge.adapters.readers.traces.platforms import (
    LangfusePlatform,
    PhoenixPlatform,
    langfuse_attributes,
    phoenix_attributes,
)
from fleetforge.core.exporting import SpanKind, TraceAssembler, TraceSpan
from fleetforge.domain.envelope import Envelope
from tests.exporters_support import (
    attributes,
    check_langfuse_attributes,
    check_langsmith_run,
    multipart_runs,
    otlp_spans,
    run_fleet,
    write_manifests,
)
from tests.support import need


@pytest.fixture(scope="module")
def spans(tmp_path_factory: pytest.TempPathFactory) -> list[TraceSpan]:
    store = run_fleet(tmp_path_factory.mktemp("fleet") / "state.db", runs=16, seed=3)
    asm = TraceAssembler()
    return [s for r in store.iter_outbox() for s in asm.feed(Envelope.from_json(r.envelope), r.position)]


def configs(tmp_path: Path, **env: str) -> dict[str, object]:
    write_manifests(tmp_path, ["langsmith", "langfuse", "phoenix"])
    found = discover({"FLEETFORGE_TRACE_EXPORTERS": "langsmith,langfuse,phoenix", "LANGSMITH_API_KEY": "k",
                      "LANGFUSE_PUBLIC_KEY": "p", "LANGFUSE_SECRET_KEY": "s", "PHOENIX_API_KEY": "x", **env},
                     tmp_path)
    return {c.name: c for c in found.active}


def test_langsmith_runs_match_the_sdk_models(spans: list[TraceSpan]) -> None:
    need(find_spec("langsmith") is not None, "the langsmith package (dev extra)")
    runs = [langsmith_run(s, "proj") for s in spans]
    for run in runs:
        check_langsmith_run(run, "proj")
    by_id = {r["id"]: r for r in runs}
    for run in runs:  # the tree closes: every parent exists and shares the trace
        if "parent_run_id" in run:
            parent = by_id[run["parent_run_id"]]
            assert parent["trace_id"] == run["trace_id"]
            assert run["dotted_order"].startswith(parent["dotted_order"] + ".")
    types = Counter(r["run_type"] for r in runs)
    assert types["chain"] and types["llm"] and types["tool"]
    llm = next(r for r, s in zip(runs, spans, strict=True) if s.kind is SpanKind.LLM and s.usage)
    usage = llm["extra"]["metadata"]["usage_metadata"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_langsmith_ids_are_stable_uuid7_of_the_start(spans: list[TraceSpan]) -> None:
    s = spans[0]
    a, b = run_uuid(s.trace_id, s.span_id, s.start_us), run_uuid(s.trace_id, s.span_id, s.start_us)
    assert a == b and a.version == 7 and int(a.hex[:12], 16) == s.start_us // 1000
    assert run_uuid(s.trace_id, "0" * 16, s.start_us) != a


def test_langsmith_multipart_and_batch_bodies(spans: list[TraceSpan], tmp_path: Path) -> None:
    need(find_spec("langsmith") is not None, "the langsmith package (dev extra)")
    cfg = configs(tmp_path, LANGSMITH_API_URL="https://ls.example.com/api/v1")["langsmith"]
    platform = LangSmithPlatform(cfg)  # type: ignore[arg-type]
    req = platform.encode(spans[:25])
    assert req.url == "https://ls.example.com/api/v1/runs/multipart" and req.spans == 25
    decoded = multipart_runs(req.headers["Content-Type"], req.content)
    assert platform.project == "default"
    assert decoded == [json.loads(json.dumps(langsmith_run(s, "default"))) for s in spans[:25]]
    assert platform.prepare() == []
    body = multipart_body([{"id": "x", "trace_id": "x", "inputs": {"a": 1}}], "B")
    assert body.startswith(b'--B\r\nContent-Disposition: form-data; name="post.x"\r\n') and body.endswith(b"--B--\r\n")


def test_langsmith_dataset_links_the_project(tmp_path: Path) -> None:
    dataset = "0b6d1c2e-3f4a-4b5c-8d6e-7f8091a2b3c4"
    cfg = configs(tmp_path, LANGSMITH_DATASET_ID=dataset, LANGSMITH_PROJECT="evals")["langsmith"]
    (req,) = LangSmithPlatform(cfg).prepare()  # type: ignore[arg-type]
    assert req.url.endswith("/sessions?upsert=true")
    assert json.loads(req.content) == {"name": "evals", "reference_dataset_id": dataset,
                                       "extra": {"metadata": {"source": "fleetforge"}}}


def test_langfuse_attributes_match_the_sdk(spans: list[TraceSpan], tmp_path: Path) -> None:
    need(find_spec("langfuse") is not None, "the langfuse package (dev extra)")
    from langfuse._client.attributes import create_generation_attributes

    for s in spans:
        check_langfuse_attributes(langfuse_attributes(s))
    s = next(x for x in spans if x.kind is SpanKind.LLM and x.usage)
    ours = langfuse_attributes(s)
    assert s.usage is not None
    sdk = create_generation_attributes(model=s.model, usage_details={"input": s.usage.input_tokens,
                                                                     "output": s.usage.output_tokens,
                                                                     "total": s.usage.total_tokens},
                                       cost_details={"total": s.usage.cost_usd}, metadata=dict(s.metadata))
    for key, value in sdk.items():  # the same attributes the SDK writes, with equal JSON content
        if key.endswith(("usage_details", "cost_details")) or ".metadata." in key:
            assert json.loads(ours[key]) == json.loads(value), key
        else:
            assert ours[key] == value, key
    cfg = configs(tmp_path, LANGFUSE_BASE_URL="https://eu.example.com")["langfuse"]
    req = LangfusePlatform(cfg).encode(spans[:10])  # type: ignore[arg-type]
    assert req.url == "https://eu.example.com/api/public/otel/v1/traces"
    assert req.headers["Content-Type"] == "application/x-protobuf"
    decoded = otlp_spans(req.content)
    assert [s.span_id.hex() for _, s in decoded] == [s.span_id for s in spans[:10]]


def test_phoenix_openinference_spans(spans: list[TraceSpan], tmp_path: Path) -> None:
    cfg = configs(tmp_path, PHOENIX_WORKSPACE="ops")["phoenix"]
    req = PhoenixPlatform(cfg).encode(spans)  # type: ignore[arg-type]
    decoded = otlp_spans(req.content)
    assert len(decoded) == len(spans)
    for (resource, pb), s in zip(decoded, spans, strict=True):
        assert resource["openinference.project.name"] == "ops" and resource["service.name"] == "fleetforge"
        attrs = attributes(pb)
        assert attrs == {k: v for k, v in phoenix_attributes(s).items()}
        assert pb.trace_id.hex() == s.trace_id and pb.span_id.hex() == s.span_id
        assert (pb.parent_span_id.hex() or None) == s.parent_span_id
        assert (pb.start_time_unix_nano, pb.end_time_unix_nano) == (s.start_us * 1000, s.end_us * 1000)
        assert pb.status.code == (1 if s.ok else 2)
        kind = attrs["openinference.span.kind"]
        assert kind == {"run": "CHAIN", "step": "CHAIN", "llm": "LLM", "tool": "TOOL", "http": "TOOL", "agent": "AGENT",
                        "guardrail": "GUARDRAIL"}[s.kind]
        if kind == "LLM" and s.usage:
            assert attrs["llm.token_count.prompt"] == s.usage.input_tokens
            assert attrs["llm.token_count.completion"] == s.usage.output_tokens
            assert attrs["llm.token_count.total"] == s.usage.total_tokens
        if kind == "TOOL":
            assert attrs["tool.name"]
        json.loads(attrs["input.value"])
        json.loads(attrs["output.value"])
        if not s.ok:
            assert [e.name for e in pb.events] == ["exception"]
