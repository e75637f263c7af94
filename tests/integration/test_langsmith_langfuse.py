"""LangSmith and Langfuse exporters against loopback platform servers, while the real runtime runs.

The servers decode exactly what was sent (JSON, multipart, OTLP protobuf) and the tests check it field
by field against the models of the official `langsmith` and `langfuse` packages. Then each endpoint
fails (500, 429 with Retry-After, 401, hanging, refusing connections): the runtime finishes its fleet
regardless, transient faults end in complete delivery, 401 parks the exporter with one warning, and
no log line carries a credential.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from fleetforge.adapters.readers.traces import ExporterSet, start_exporters
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.exporting import SpanKind, TraceAssembler
from fleetforge.domain.envelope import Envelope
from tests.exporters_support import (
    Answer,
    LoopbackPlatform,
    Received,
    agent_chain,
    asked_tool_calls,
    attributes,
    check_langfuse_attributes,
    check_langsmith_run,
    free_port,
    multipart_runs,
    otlp_spans,
    run_fleet,
    write_manifests,
)
from tests.support import need

SECRETS = {"LANGSMITH_API_KEY": "lsv2_pt_secret_langsmith_0001", "LANGFUSE_PUBLIC_KEY": "pk-lf-public-0002",
           "LANGFUSE_SECRET_KEY": "sk-lf-secret-langfuse-0003"}
LF_PATH = "/api/public/otel/v1/traces"
OP = "gen_ai.operation.name"


@pytest.fixture(autouse=True)
def _packages() -> None:
    need(find_spec("langsmith") is not None and find_spec("langfuse") is not None,
         "the langsmith and langfuse packages (dev extras)")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    basic = base64.b64encode(f"{SECRETS['LANGFUSE_PUBLIC_KEY']}:{SECRETS['LANGFUSE_SECRET_KEY']}".encode()).decode()
    for secret in (SECRETS["LANGSMITH_API_KEY"], SECRETS["LANGFUSE_SECRET_KEY"], basic):
        assert secret not in text


def env_for(tmp_path: Path, names: str, langsmith: str = "", langfuse: str = "", **extra: str) -> dict[str, str]:
    write_manifests(tmp_path / "plugins", ["langsmith", "langfuse"], flush_interval_ms=100, timeout_s=0.5,
                    max_backoff_s=0.2, poll_interval_ms=50)
    return {"FLEETFORGE_TRACE_EXPORTERS": names, "FLEETFORGE_PLUGINS_DIR": str(tmp_path / "plugins"),
            "LANGSMITH_API_URL": langsmith, "LANGFUSE_BASE_URL": langfuse, **SECRETS, **extra}


def fleet_with_exporters(tmp_path: Path, env: dict[str, str], runs: int = 12) -> tuple[SqliteStore, ExporterSet]:
    """Run a fleet while the exporters deliver from the same outbox (started before the worker)."""
    started: list[ExporterSet] = []
    path = tmp_path / "state.db"
    store = run_fleet(path, runs=runs, before=lambda: started.append(start_exporters(SqliteStore(path), env)))
    return store, started[0]


def expected(store: SqliteStore) -> list:  # type: ignore[type-arg]
    asm = TraceAssembler()
    return [s for r in store.iter_outbox() for s in asm.feed(Envelope.from_json(r.envelope), r.position)]


def runs_of(received: list[Received]) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for r in received:
        if r.path == "/runs/multipart":
            out += multipart_runs(r.headers["content-type"], r.body)
        elif r.path == "/runs/batch":
            body = json.loads(r.body)
            assert body["patch"] == []
            out += body["post"]
    return out


def test_langsmith_multipart_and_langfuse_otlp_decode_to_the_published_models(tmp_path: Path,
                                                                             logs: pytest.LogCaptureFixture) -> None:
    ls, lf = LoopbackPlatform(), LoopbackPlatform()
    env = env_for(tmp_path, "langsmith,langfuse", ls.url, lf.url, LANGSMITH_PROJECT="fleet-tests")
    store, running = fleet_with_exporters(tmp_path, env)
    assert running.wait_idle(30) and running.stop(10)
    spans = expected(store)

    runs = runs_of(ls.received)
    assert all(r.headers["x-api-key"] == SECRETS["LANGSMITH_API_KEY"] for r in ls.received)
    assert Counter(r["id"] for r in runs).most_common(1)[0][1] == 1 and len(runs) == len(spans)
    for run in runs:
        check_langsmith_run(run, "fleet-tests")
    roots = [r for r in runs if "parent_run_id" not in r]
    assert len(roots) == sum(1 for s in spans if s.kind is SpanKind.RUN)
    tokens = sum(r["extra"]["metadata"].get("usage_metadata", {}).get("total_tokens", 0) for r in runs)
    assert tokens == sum(s.usage.total_tokens for s in spans if s.usage and s.kind is SpanKind.LLM)
    # an agent's tool call nests under the chat of the turn that asked for it, under invoke_agent
    asked = asked_tool_calls(store)
    ls_runs = {r["id"]: r for r in runs}
    ls_calls = [r for r in runs if r["run_type"] == "tool" and r["extra"]["metadata"].get("gen_ai.tool.call.id")]
    assert ls_calls
    for run in ls_calls:
        meta = run["extra"]["metadata"]
        assert (meta["gen_ai.tool.call.id"], meta["gen_ai.tool.name"]) == asked[(meta["run_id"], meta["step_id"])]
        chain = agent_chain(run["id"], lambda i: ls_runs[i].get("parent_run_id"),
                            lambda i: f'{ls_runs[i]["run_type"]}:{ls_runs[i]["extra"]["metadata"].get(OP, "")}')
        assert chain[:5] == ["tool:execute_tool", "chain:", "llm:chat", "chain:", "chain:invoke_agent"]

    token = base64.b64encode(f"{SECRETS['LANGFUSE_PUBLIC_KEY']}:{SECRETS['LANGFUSE_SECRET_KEY']}".encode()).decode()
    decoded = []
    for r in lf.received:
        assert r.path == LF_PATH and r.headers["content-type"] == "application/x-protobuf"
        assert r.headers["authorization"] == f"Basic {token}"
        assert r.headers["x-langfuse-ingestion-version"] == "4"
        decoded += otlp_spans(r.body)
    assert sorted(s.span_id.hex() for _, s in decoded) == sorted(s.span_id for s in spans)
    by_id = {s.span_id: s for s in spans}
    for resource, pb in decoded:
        attrs = attributes(pb)
        check_langfuse_attributes(attrs)
        span = by_id[pb.span_id.hex()]
        assert resource["service.name"] == "fleetforge"
        assert (pb.parent_span_id.hex() or None) == span.parent_span_id and pb.trace_id.hex() == span.trace_id
        if span.kind is SpanKind.LLM and span.usage:
            usage = json.loads(attrs["langfuse.observation.usage_details"])
            assert (usage["input"], usage["output"]) == (span.usage.input_tokens, span.usage.output_tokens)
    lf_spans = {pb.span_id.hex(): attributes(pb) | {"parent": pb.parent_span_id.hex() or None} for _, pb in decoded}
    lf_calls = [sid for sid, a in lf_spans.items() if a.get("gen_ai.tool.call.id")]
    assert len(lf_calls) == len(ls_calls)
    for sid in lf_calls:
        a = lf_spans[sid]
        assert (a["gen_ai.tool.call.id"], a["gen_ai.tool.name"]) == asked[(a["run_id"], a["step_id"])]
        chain = agent_chain(sid, lambda i: lf_spans[i]["parent"],
                            lambda i: f'{lf_spans[i]["langfuse.observation.type"]}:{lf_spans[i].get(OP, "")}')
        assert chain[:5] == ["tool:execute_tool", "span:", "generation:chat", "span:", "agent:invoke_agent"]
    ls.close()
    lf.close()


def test_langsmith_batch_endpoint_and_dataset_link(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    ls = LoopbackPlatform()
    dataset = "6f1c9a2b-1d3e-4f50-9a7b-8c9d0e1f2a3b"
    env = env_for(tmp_path, "langsmith", ls.url, LANGSMITH_DATASET_ID=dataset, LANGSMITH_PROJECT="evals")
    (tmp_path / "plugins" / "exporters" / "langsmith.toml").write_text(
        'name = "langsmith"\n[options]\ningest = "batch"\n[delivery]\nflush_interval_ms = 100\n')
    store, running = fleet_with_exporters(tmp_path, env, runs=8)
    assert running.wait_idle(30) and running.stop(10)
    first = ls.received[0]
    assert first.path == "/sessions?upsert=true"
    assert json.loads(first.body)["reference_dataset_id"] == dataset and json.loads(first.body)["name"] == "evals"
    runs = runs_of(ls.received[1:])
    assert len(runs) == len(expected(store))
    for run in runs:
        check_langsmith_run(run, "evals")
    ls.close()


def flaky(status: int, times: int, headers: dict[str, str] | None = None) -> Callable[[int, Received], Answer]:
    return lambda i, r: Answer(status, headers or {}) if i < times else Answer()


@pytest.mark.parametrize(("fault", "answer"), [
    pytest.param("500", flaky(500, 3), id="500"),
    pytest.param("429", flaky(429, 2, {"Retry-After": "1"}), id="429-retry-after"),
    pytest.param("hang", lambda i, r: Answer(hang=2.0) if i < 2 else Answer(), id="hanging"),
])
def test_transient_faults_end_in_complete_delivery(tmp_path: Path, logs: pytest.LogCaptureFixture, fault: str,
                                                    answer: Callable[[int, Received], Answer]) -> None:
    ls, lf = LoopbackPlatform(answer), LoopbackPlatform(answer)
    env = env_for(tmp_path, "langsmith,langfuse", ls.url, lf.url)
    store, running = fleet_with_exporters(tmp_path, env)
    assert store.count_open_runs() == 0  # the runtime finished while the platforms failed
    assert running.wait_idle(60) and running.stop(10)
    ids = sorted(s.span_id for s in expected(store))
    answered = [r for i, r in enumerate(lf.received) if answer(i, r).status == 200 and not answer(i, r).hang]
    assert sorted(s.span_id.hex() for r in answered for _, s in otlp_spans(r.body)) == ids
    assert len(runs_of([r for i, r in enumerate(ls.received) if answer(i, r).status == 200
                        and not answer(i, r).hang])) == len(ids)
    assert all(e.info.retries >= 2 for e in running.exporters)
    warnings = [r for r in logs.records if r.levelno == logging.WARNING and "retrying" in r.getMessage()]
    assert warnings and len(warnings) <= 4  # rate-limited: one per exporter per minute, at most
    if fault == "429":
        gaps = [b.at - a.at for a, b in zip(lf.received, lf.received[1:], strict=False)][:2]
        assert min(gaps) >= 0.9  # Retry-After: 1 was honoured


def test_refused_connections_are_retried_until_the_platform_comes_up(tmp_path: Path,
                                                                      logs: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens here yet
    env = env_for(tmp_path, "langfuse", langfuse=f"http://127.0.0.1:{port}")
    store, running = fleet_with_exporters(tmp_path, env)
    assert store.count_open_runs() == 0
    assert not running.wait_idle(1.0)
    assert "cannot connect" in running.exporters[0].info.last_error
    lf = LoopbackPlatform(port=port)
    assert running.wait_idle(30) and running.stop(10)
    got = sorted(s.span_id.hex() for r in lf.received for _, s in otlp_spans(r.body))
    assert got == sorted(s.span_id for s in expected(store))
    lf.close()


def test_refused_credentials_park_with_one_warning(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    ls, lf = LoopbackPlatform(lambda i, r: Answer(401)), LoopbackPlatform()
    env = env_for(tmp_path, "langsmith,langfuse", ls.url, lf.url)
    store, running = fleet_with_exporters(tmp_path, env)
    assert store.count_open_runs() == 0
    assert running.exporters[1].wait_idle(30)  # Langfuse is unaffected
    assert not running.exporters[0].wait_idle(1.0)
    assert running.exporters[0].info.state == "auth_failed" and len(ls.received) == 1
    assert not running.stop(5)
    parked = [r for r in logs.records if "refused the credentials" in r.getMessage()]
    assert len(parked) == 1 and parked[0].levelno == logging.WARNING and "HTTP 401" in parked[0].getMessage()
    # the cursor is "delivered up to here": it may pass events that make no span yet, never one that does
    asm = TraceAssembler()
    first_span = next(r.position for r in store.iter_outbox() if asm.feed(Envelope.from_json(r.envelope), r.position))
    assert store.get_cursor("exporter-langsmith") < first_span
    assert store.get_cursor("exporter-langfuse") == list(store.iter_outbox())[-1].position
    ls.close()
    lf.close()


def test_cli_run_until_idle_delivers_the_outbox(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from fleetforge.adapters.cli import exporters as cli

    app = typer.Typer()
    app.callback()(lambda: None)
    cli.register(app)
    lf = LoopbackPlatform()
    store = run_fleet(tmp_path / "data" / "state.db", runs=6)
    env = env_for(tmp_path, "langfuse", langfuse=lf.url)
    result = CliRunner().invoke(app, ["exporters", "run", "--until-idle", "--data-dir", str(tmp_path / "data"),
                                      "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["exporters"][0]["spans_delivered"] == len(expected(store))
    assert sum(len(otlp_spans(r.body)) for r in lf.received) == len(expected(store))
    again = CliRunner().invoke(app, ["exporters", "run", "--until-idle", "--data-dir", str(tmp_path / "data"),
                                     "--json"], env=env)
    assert json.loads(again.stdout.strip().splitlines()[-1])["exporters"][0]["spans_delivered"] == 0
    lf.close()
