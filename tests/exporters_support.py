"""Helpers for the trace exporter tests: a real fleet in SQLite, manifests, a loopback platform server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from fleetforge.adapters.devstack.webhook import WebhookServer
from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.agent import call_id
from fleetforge.core.demo import WEBHOOK_PLACEHOLDER, demo_fleet
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime

__all__ = ["Answer", "LoopbackPlatform", "Received", "agent_chain", "asked_tool_calls", "free_port", "run_fleet",
           "write_manifests"]


def run_fleet(path: Path, runs: int = 12, seed: int = 7, *, before: Callable[[], None] | None = None) -> SqliteStore:
    """Run the demo fleet to completion with the real runtime (no simulated sleeps) in a SQLite store."""
    store = SqliteStore(path)
    store.migrate()
    hook = WebhookServer().start()

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()),
                                        prices=PriceTable(), llm_base_url=None, llm_api_key=None, sim_sleep=False)
            rt = Runtime(store, executors=executors, packs=default_packs())
            for spec in demo_fleet(runs, seed):
                rt.submit(json.loads(json.dumps(spec).replace(WEBHOOK_PLACEHOLDER, hook.base_url)))
            if before is not None:
                before()
            await rt.worker("w", concurrency=16, poll_interval_s=0.01).run(until_idle=True)

    try:
        asyncio.run(go())
    finally:
        hook.stop()
    return store


def asked_tool_calls(store: SqliteStore) -> dict[tuple[str, str], tuple[str, str]]:
    """(run id, tool call step id) -> (the model's call id, tool name), from the agents' turns as stored."""
    asked = {}
    for run in store.list_runs(limit=10_000):
        for turn in store.get_steps(run.id):
            taken: set[str] = set()
            for k, call in enumerate((turn.output or {}).get("tool_calls", []) if turn.type == "llm" else []):
                asked[(run.id, call_id(turn.step_id, call["id"], k, taken))] = (call["id"], call["function"]["name"])
    return asked


def agent_chain(span_id: str, parent_of: Callable[[str], str | None], kind_of: Callable[[str], str]) -> list[str]:
    """The kinds from a span up to the root (`parent_of` gives a span's parent id, None at the root)."""
    kinds = [kind_of(span_id)]
    parent = parent_of(span_id)
    while parent is not None:
        kinds.append(kind_of(parent))
        parent = parent_of(parent)
    return kinds


def write_manifests(folder: Path, names: Iterable[str], **delivery: Any) -> Path:
    """`folder/exporters/<name>.toml` for each name, with an optional [delivery] table; returns `folder`."""
    (folder / "exporters").mkdir(parents=True, exist_ok=True)
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in delivery.items())
    for name in names:
        text = f'name = "{name}"\nenabled = true\n' + (f"\n[delivery]\n{table}" if table else "")
        (folder / "exporters" / f"{name}.toml").write_text(text, encoding="utf-8")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Answer:
    """How the server answers one request: a status (+ headers), or `hang` seconds without answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    body: bytes = b""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class LoopbackPlatform:
    """A loopback HTTP server recording every request; `answer(req_index)` decides each reply."""

    def __init__(self, answer: Callable[[int, Received], Answer] | None = None, port: int = 0) -> None:
        self.received: list[Received] = []
        self.answer = answer or (lambda i, r: Answer())
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                               time.monotonic())
                with lock:
                    index = len(outer.received)
                    outer.received.append(rec)
                a = outer.answer(index, rec)
                if a.hang:
                    time.sleep(a.hang)
                    self.close_connection = True
                    return
                self.send_response(a.status)
                for k, v in a.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(a.body)))
                self.end_headers()
                self.wfile.write(a.body)

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def to(self, path: str) -> list[Received]:
        """Requests whose path (without query) is `path`."""
        return [r for r in self.received if r.path.split("?")[0] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- decoding what was sent, and checking it against the platforms' published models ----------------


def any_value(v: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def otlp_spans(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, span) for every span of an OTLP/HTTP protobuf request body."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            out.extend((resource, s) for s in ss.spans)
    return out


def attributes(span: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in span.attributes}


def multipart_runs(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """Reassemble run dicts from a /runs/multipart body (post.<id> plus post.<id>.<field> parts)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    runs: dict[str, dict[str, Any]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert part.get_content_type() == "application/json"
        payload = part.get_payload(decode=True)
        assert int(part["Content-Length"]) == len(payload)
        op, run_id, *field_ = str(name).split(".")
        assert op == "post"
        value = json.loads(payload)
        if field_:
            runs[run_id][field_[0]] = value
        else:
            runs[run_id] = value
    return list(runs.values())


LANGSMITH_RUN_TYPES = {"chain", "llm", "tool"}


def check_langsmith_run(run: dict[str, Any], project: str) -> None:
    """One run-create object against the `langsmith` package's models and the ingest rules."""
    import uuid as _uuid
    from datetime import datetime

    from langsmith import schemas
    from langsmith.run_trees import validate_extracted_usage_metadata

    assert set(run) <= set(schemas.RunLikeDict.__annotations__), set(run) - set(schemas.RunLikeDict.__annotations__)
    model = schemas.Run(**run)
    assert model.id.version == 7 and model.trace_id.version == 7
    assert run["run_type"] in LANGSMITH_RUN_TYPES and run["session_name"] == project
    segments = run["dotted_order"].split(".")
    ids = [_uuid.UUID(seg[-36:]) for seg in segments]
    assert ids[-1] == model.id and ids[0] == model.trace_id
    assert (model.parent_run_id == ids[-2]) if len(ids) > 1 else model.parent_run_id is None
    started = datetime.strptime(segments[-1][:-36], "%Y%m%dT%H%M%S%fZ")
    assert started == model.start_time.replace(tzinfo=None)
    assert model.end_time is not None and model.end_time >= model.start_time
    meta = model.metadata
    if run["run_type"] == "llm" and run["outputs"].get("status") != "denied":
        assert meta["ls_provider"] and meta["ls_model_name"]
        if "usage_metadata" in meta:
            usage = validate_extracted_usage_metadata(meta["usage_metadata"])
            assert {"input_tokens", "output_tokens", "total_tokens"} <= set(usage)  # UsageMetadata's required
            assert usage["total_tokens"] >= usage["input_tokens"] + usage["output_tokens"]
    assert ("error" in run) == (run["outputs"].get("status") in ("failed", "denied", "canceled"))


def check_langfuse_attributes(attrs: dict[str, Any]) -> None:
    """One span's attributes against the `langfuse` package's attribute names and models."""
    from langfuse._client.attributes import LangfuseOtelSpanAttributes as A
    from langfuse._client.constants import ObservationTypeLiteral, get_observation_types_list
    from langfuse.api import ObservationLevel

    names = {v for k, v in vars(A).items() if not k.startswith("_") and isinstance(v, str)}
    prefixes = (A.OBSERVATION_METADATA + ".", A.TRACE_METADATA + ".")
    ours = {"run_id", "step_id", "workspace", "app", "attempt"}
    ours |= {"gen_ai.operation.name", "gen_ai.request.model", "gen_ai.agent.name", "gen_ai.tool.name",
             "gen_ai.tool.call.id"}  # OTel GenAI conventions, which Langfuse's OTLP ingestion also reads
    for key in attrs:
        assert key in names or key.startswith(prefixes) or key in ours, key
    assert attrs[A.OBSERVATION_TYPE] in get_observation_types_list(ObservationTypeLiteral)
    if A.OBSERVATION_LEVEL in attrs:
        ObservationLevel(attrs[A.OBSERVATION_LEVEL])
    for key, value in attrs.items():
        if key.startswith(prefixes):
            json.loads(value)
    json.loads(attrs[A.OBSERVATION_INPUT])
    json.loads(attrs[A.OBSERVATION_OUTPUT])
    if A.OBSERVATION_USAGE_DETAILS in attrs:
        usage = json.loads(attrs[A.OBSERVATION_USAGE_DETAILS])
        assert all(isinstance(v, int) for v in usage.values()) and usage["total"] >= usage["input"]
        cost = json.loads(attrs[A.OBSERVATION_COST_DETAILS])
        assert isinstance(cost["total"], float | int)
        assert attrs[A.OBSERVATION_TYPE] == "generation" and attrs[A.OBSERVATION_MODEL]
    assert isinstance(attrs[A.TRACE_TAGS], list) and attrs[A.TRACE_NAME]
