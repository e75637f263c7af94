"""Run endpoints: submit (idempotent), list, get (by id or unique prefix), cancel.

Each calls what the CLI and the Python client call: `Runtime.submit` / `Runtime.cancel`,
`core.runs.resolve_run_id` and the store's reads.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.responses import Response

from fleetforge.adapters.api.routing import (
    ApiContext,
    ApiRoute,
    BadRequest,
    Call,
    Param,
    blocking,
    iso,
    json_reply,
    query_int,
)
from fleetforge.core.ids import new_run_id
from fleetforge.core.runs import resolve_run_id
from fleetforge.domain.errors import NotFoundError, SpecError
from fleetforge.domain.models import RunRow, RunStatus
from fleetforge.domain.spec import MAX_SPEC_BYTES, decode_spec_bytes, load_spec_text
from fleetforge.domain.tokens import Scope
from fleetforge.ports.store import Store

__all__ = ["ROUTES", "RUN_ID_PARAM", "run_document", "run_summary"]

STATUSES: Final = tuple(s.value for s in RunStatus)
RUN_ID_PARAM: Final = Param("run_id", "path", "The run id, or a unique prefix of it (like git).", required=True)
_SPEC_BODY: Final = {
    "description": "The run spec, as `fleetforge submit` takes it: JSON (application/json) or YAML "
                   "(application/yaml); at most 1 MiB.",
    "required": True,
    "content": {"application/json": {"schema": {"type": "object", "required": ["steps"]}},
                "application/yaml": {"schema": {"type": "string"}}},
}
_RUN_SUMMARY: Final = {
    "type": "object",
    "properties": {k: {"type": t} for k, t in (
        ("run_id", "string"), ("workspace", "string"), ("app", "string"), ("status", "string"),
        ("error_kind", "string"), ("created_at", "string"), ("finished_at", ["string", "null"]),
        ("created_us", "integer"), ("finished_us", ["integer", "null"]))},
}
_RUN: Final = {"type": "object", "properties": {
    **_RUN_SUMMARY["properties"],  # type: ignore[dict-item]
    "trace_id": {"type": "string"}, "slo_tier": {"type": "string"}, "outputs": {},
    "steps": {"type": "array", "items": {"type": "object"}}, "attempts": {"type": "array", "items": {"type": "object"}},
    "policy_decisions": {"type": "array", "items": {"type": "object"}}}}


def run_summary(r: RunRow) -> dict[str, Any]:
    """A run as `GET /v1/runs` lists it."""
    return {"run_id": r.id, "workspace": r.workspace, "app": r.app, "status": str(r.status),
            "error_kind": r.error_kind, "created_at": iso(r.created_us), "finished_at": iso(r.finished_us),
            "created_us": r.created_us, "finished_us": r.finished_us}


def run_document(store: Store, run_id: str) -> dict[str, Any]:
    """A run as `GET /v1/runs/{id}` shows it: `fleetforge runs get --json`, plus each step's output."""
    run = store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id!r}; list runs with GET /v1/runs")
    return {
        **run_summary(run), "trace_id": run.trace_id, "slo_tier": run.slo_tier, "outputs": run.outputs,
        "steps": [{"step_id": s.step_id, "type": str(s.type), "status": str(s.status), "attempts": s.attempt,
                   "error_kind": s.error_kind, "output": s.output} for s in store.get_steps(run_id)],
        "attempts": [{"step_id": a.step_id, "attempt": a.attempt, "status": a.status, "error_kind": a.error_kind,
                      "tokens_reserved": a.tokens_reserved, "tokens_used": a.tokens_used,
                      "cost_reserved": a.cost_reserved_micros / 1e6, "cost_used": a.cost_used_micros / 1e6,
                      "tool": a.tool, "provider": a.provider, "model": a.model} for a in store.get_attempts(run_id)],
        "policy_decisions": [{"step_id": d.step_id, "attempt": d.attempt, "pack": d.pack, "hook": d.hook,
                              "effect": d.effect, "reason": d.reason} for d in store.get_decisions(run_id)],
    }


def _spec_of(call: Call) -> dict[str, Any]:
    """The body as a spec mapping (JSON, else YAML, as `fleetforge submit` reads files); 400 when unreadable."""
    try:
        return load_spec_text(decode_spec_bytes(call.body, source="body"), source="body")
    except SpecError as exc:
        raise BadRequest("the body is not a readable run spec", problems=exc.problems) from None


async def submit_run(api: ApiContext, call: Call) -> Response:
    data = _spec_of(call)
    key = call.headers.get("idempotency-key")
    fresh = new_run_id()
    run_id = await blocking(api.runtime.submit, data, run_id=fresh, idempotency_key=key)
    created = run_id == fresh
    return json_reply({"run_id": run_id, "created": created}, 201 if created else 200,
                      {"location": f"/v1/runs/{run_id}"})


async def list_runs(api: ApiContext, call: Call) -> Response:
    status = call.query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: got {status!r:.40}, expected one of {', '.join(STATUSES)}")
    limit = query_int(call.query, "limit", 50, 1, 10_000)
    rows = await blocking(api.store.list_runs, status=status, workspace=call.query.get("workspace"), limit=limit)
    return json_reply([run_summary(r) for r in rows])


async def get_run(api: ApiContext, call: Call) -> Response:
    def read() -> dict[str, Any]:
        return run_document(api.store, resolve_run_id(api.store, call.path["run_id"]))

    return json_reply(await blocking(read))


async def cancel_run(api: ApiContext, call: Call) -> Response:
    def cancel() -> dict[str, Any]:
        run_id = resolve_run_id(api.store, call.path["run_id"])
        canceled = api.runtime.cancel(run_id)
        run = api.store.get_run(run_id)
        return {"run_id": run_id, "canceled": canceled, "status": str(run.status) if run else None}

    return json_reply(await blocking(cancel))


_LOOKUP: Final = {400: "bad or ambiguous run id (the candidates are listed)", 404: "no such run"}

ROUTES: Final = (
    ApiRoute("POST", "/v1/runs", Scope.SUBMIT, submit_run, "Submit a run",
             "Validates the spec completely and stores the run (nothing is stored when it is invalid). With an "
             "`Idempotency-Key` header, the same key always gives the same run, stored once.",
             params=(Param("Idempotency-Key", "header", "At most 255 characters; the same key, the same run."),),
             max_body=MAX_SPEC_BYTES, body=_SPEC_BODY,
             responses={201: "stored; `run_id`, `created: true`",
                        200: "the key was used before: that run's id, `created: false`, nothing stored",
                        400: "the body is not JSON or YAML", 413: "body over 1 MiB",
                        422: "invalid spec: `problems` names each"},
             response_schema={"type": "object", "properties": {"run_id": {"type": "string"},
                                                                 "created": {"type": "boolean"}}}),
    ApiRoute("GET", "/v1/runs", Scope.READ, list_runs, "List runs, newest first",
             params=(Param("status", "query", "Only runs with this status.", {"type": "string", "enum": STATUSES}),
                     Param("workspace", "query", "Only runs of this workspace."),
                     Param("limit", "query", "At most this many runs (1 to 10000, default 50).",
                           {"type": "integer", "minimum": 1, "maximum": 10_000})),
             responses={200: "the runs", 400: "bad filter"},
             response_schema={"type": "array", "items": _RUN_SUMMARY}),
    ApiRoute("GET", "/v1/runs/{run_id}", Scope.READ, get_run, "Get a run with its steps (and their outputs), "
             "attempts and policy decisions", params=(RUN_ID_PARAM,),
             responses={200: "the run", **_LOOKUP}, response_schema=_RUN),
    ApiRoute("POST", "/v1/runs/{run_id}/cancel", Scope.CONTROL, cancel_run, "Cancel a run",
             "Queued and pending steps stop; running attempts finish. `canceled` is false when the run had "
             "already ended.", params=(RUN_ID_PARAM,),
             responses={200: "`run_id`, `canceled`, `status`", **_LOOKUP},
             response_schema={"type": "object", "properties": {"run_id": {"type": "string"},
                                                                 "canceled": {"type": "boolean"},
                                                                 "status": {"type": "string"}}}),
)
