"""LangSmith: canonical spans as runs, through the runs ingest API.

`POST {LANGSMITH_API_URL}/runs/multipart` (default) or `/runs/batch` (manifest `options.ingest =
"batch"`), header `x-api-key`. Run ids are UUID v7, derived from (trace id, span id) with the span's
start as their timestamp, so a replay sends the same ids; `trace_id` is the root run's id and
`dotted_order` chains `<start>Z<id>` segments from the root. With LANGSMITH_DATASET_ID, the project
runs are written to is linked to that dataset (`reference_dataset_id`, as the LangSmith client's
`create_project` does), with one `POST /sessions?upsert=true` before the first batch.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from fleetforge import __version__
from fleetforge.adapters.readers.traces.delivery import Request
from fleetforge.adapters.readers.traces.platform_spec import Credentials, ExporterConfig, PlatformSpec, missing
from fleetforge.core.exporting import SpanKind, TraceSpan, genai_attributes

__all__ = ["SPEC", "LangSmithPlatform", "dotted_segment", "langsmith_run", "multipart_body", "run_uuid"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RUN_TYPE: Final = {SpanKind.RUN: "chain", SpanKind.STEP: "chain", SpanKind.LLM: "llm", SpanKind.TOOL: "tool",
                    SpanKind.HTTP: "tool", SpanKind.AGENT: "chain", SpanKind.GUARDRAIL: "chain"}
_PART_FIELDS: Final = ("inputs", "outputs", "events", "extra", "error", "serialized")


def run_uuid(trace_id: str, span_id: str, start_us: int) -> uuid.UUID:
    """A UUID v7 whose timestamp is the span start (ms) and whose other bits hash (trace, span)."""
    digest = hashlib.sha256(f"{trace_id}:{span_id}".encode()).digest()
    b = bytearray(16)
    b[0:6] = (max(start_us, 0) // 1000 % 2**48).to_bytes(6, "big")
    b[6:16] = digest[0:10]
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(b))


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def dotted_segment(start_us: int, run_id: uuid.UUID) -> str:
    """One `dotted_order` segment: `%Y%m%dT%H%M%S%fZ` then the run id."""
    return _dt(start_us).strftime("%Y%m%dT%H%M%S%fZ") + str(run_id)


def _iso(us: int) -> str:
    return _dt(us).isoformat()


def langsmith_run(span: TraceSpan, project: str) -> dict[str, Any]:
    """The run-create object of one span (the shape `Client.batch_ingest_runs` posts)."""
    chain = [*span.lineage, (span.span_id, span.start_us)]
    ids = [run_uuid(span.trace_id, sid, start) for sid, start in chain]
    metadata: dict[str, Any] = {**span.metadata, **genai_attributes(span)}
    if span.kind is SpanKind.LLM:  # a denied attempt never reached its model: nothing to name
        if span.provider:
            metadata["ls_provider"] = span.provider
        if span.model:
            metadata["ls_model_name"] = span.model
        metadata["ls_model_type"] = "chat"
    u = span.usage
    if u is not None and span.kind is SpanKind.LLM:
        usage: dict[str, Any] = {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                                 "total_tokens": u.total_tokens, "total_cost": u.cost_usd}
        if u.cached_tokens:
            usage["input_token_details"] = {"cache_read": u.cached_tokens}
        metadata["usage_metadata"] = usage
    run: dict[str, Any] = {
        "id": str(ids[-1]),
        "trace_id": str(ids[0]),
        "dotted_order": ".".join(dotted_segment(start, rid) for (_, start), rid in zip(chain, ids, strict=True)),
        "name": span.name,
        "run_type": _RUN_TYPE[span.kind],
        "start_time": _iso(span.start_us),
        "end_time": _iso(span.end_us),
        "inputs": dict(span.inputs),
        "outputs": dict(span.outputs),
        "extra": {"metadata": metadata, "runtime": {"library": "fleetforge", "library_version": __version__}},
        "tags": [span.workspace, span.app, str(span.kind)],
        "session_name": project,
    }
    if len(ids) > 1:
        run["parent_run_id"] = str(ids[-2])
    if not span.ok:
        run["error"] = span.status_message or "failed"
    return run


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def multipart_body(runs: Sequence[dict[str, Any]], boundary: str) -> bytes:
    """multipart/form-data as `/runs/multipart` reads it: `post.<id>` then `post.<id>.<field>` parts."""
    out = bytearray()

    def part(name: str, data: bytes) -> None:
        out.extend(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                   f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        out.extend(data)
        out.extend(b"\r\n")

    for run in runs:
        main = {k: v for k, v in run.items() if k not in _PART_FIELDS}
        part(f"post.{run['id']}", _dumps(main))
        for key in _PART_FIELDS:
            if run.get(key) is not None:
                part(f"post.{run['id']}.{key}", _dumps(run[key]))
    out.extend(f"--{boundary}--\r\n".encode())
    return bytes(out)


class LangSmithPlatform:
    """LangSmith runs ingest."""

    name = "langsmith"

    def __init__(self, config: ExporterConfig) -> None:
        self.base_url = config.base_url
        self.project = config.options.get("project", "default")
        self.ingest = config.options.get("ingest", "multipart")
        self.dataset_id = config.options.get("dataset_id")

    def prepare(self) -> list[Request]:
        if not self.dataset_id:
            return []
        body = {"name": self.project, "reference_dataset_id": self.dataset_id,
                "extra": {"metadata": {"source": "fleetforge"}}}
        return [Request(f"{self.base_url}/sessions?upsert=true", _dumps(body), {"Content-Type": "application/json"})]

    def encode(self, spans: Sequence[TraceSpan]) -> Request:
        runs = [langsmith_run(s, self.project) for s in spans]
        if self.ingest == "batch":
            return Request(f"{self.base_url}/runs/batch", _dumps({"post": runs, "patch": []}),
                           {"Content-Type": "application/json"}, len(runs))
        boundary = uuid.uuid4().hex
        return Request(f"{self.base_url}/runs/multipart", multipart_body(runs, boundary),
                       {"Content-Type": f"multipart/form-data; boundary={boundary}"}, len(runs))

    def problem(self, body: bytes) -> str | None:
        return None


def _credentials(env: Mapping[str, str], options: dict[str, str], loopback: bool) -> Credentials | str:
    key = env.get("LANGSMITH_API_KEY", "")
    if not key:
        return missing("LANGSMITH_API_KEY")
    headers = {"x-api-key": key}
    if env.get("LANGSMITH_WORKSPACE_ID"):
        headers["x-tenant-id"] = env["LANGSMITH_WORKSPACE_ID"]
    dataset = env.get("LANGSMITH_DATASET_ID", "").strip()
    if dataset:
        try:
            options["dataset_id"] = str(uuid.UUID(dataset))
        except ValueError:
            return f": LANGSMITH_DATASET_ID: got {dataset!r}, expected a dataset UUID"
    options["project"] = env.get("LANGSMITH_PROJECT") or options.get("project") or "default"
    options.setdefault("ingest", "multipart")
    return Credentials(headers, (key,))


def _check_options(options: Mapping[str, Any]) -> str | None:
    ingest = options.get("ingest")
    if ingest not in (None, "multipart", "batch"):
        return f"got options.ingest = {ingest!r}, expected \"multipart\" or \"batch\""
    return None


SPEC: Final = PlatformSpec(
    name="langsmith", url_var="LANGSMITH_API_URL", default_url="https://api.smith.langchain.com",
    env=("LANGSMITH_API_KEY", "LANGSMITH_API_URL", "LANGSMITH_DATASET_ID", "LANGSMITH_PROJECT",
         "LANGSMITH_WORKSPACE_ID"),
    options={"project": str, "ingest": str}, credentials=_credentials, encoder=LangSmithPlatform,
    check_options=_check_options,
)
