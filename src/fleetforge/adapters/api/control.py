"""Run-operation endpoints: approve, deny, pause, resume (with patched inputs), fork and replay.

Each is a thin handler over what the CLI calls (`core/control.py`, `adapters/operations.py`), with the
acting token's name and id as the actor (`actor_of`); the token itself is never recorded.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Final

from starlette.responses import Response

from fleetforge.adapters import operations
from fleetforge.adapters.api.routing import ApiContext, ApiRoute, BadRequest, Call, Param, blocking, json_reply
from fleetforge.adapters.api.runs import RUN_ID_PARAM
from fleetforge.core import control
from fleetforge.core.replay_report import Tolerance
from fleetforge.core.runs import resolve_run_id
from fleetforge.domain.spec import MAX_SPEC_BYTES
from fleetforge.domain.tokens import Scope, TokenRow

__all__ = ["MAX_REPLAY_TIMEOUT_S", "ROUTES", "actor_of", "json_body"]

MAX_REPLAY_TIMEOUT_S: Final = 300.0
_SMALL_BODY: Final = 16 * 1024
STEP_PARAM: Final = Param("step_id", "path", "The step id, or an agent's tool call id (`support.t2.ccall_1`).",
                          required=True)


def actor_of(token: TokenRow | None) -> str:
    """Who acts on an API call: the token's name and id (never the token)."""
    return "api" if token is None else f"token:{token.name}#{token.id}"[: control.MAX_ACTOR_CHARS]


def json_body(body: bytes, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The body as a JSON object with only `fields` (each of its type, never a boolean); empty is {}.
    BadRequest (400) when it is not JSON, 422 for an unknown field or a wrong type."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON ({exc}); send a JSON object") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the body is {type(doc).__name__}, expected a JSON object", 422)
    problems = [f"{k}: got an unknown field, expected one of {', '.join(fields)}" for k in doc if k not in fields]
    problems += [f"{k}: got {type(v).__name__}, expected {_kind(fields[k])}" for k, v in doc.items()
                 if k in fields and v is not None and (isinstance(v, bool) or not isinstance(v, fields[k]))]
    if problems:
        raise BadRequest("the body has bad fields", 422, problems)
    return {k: v for k, v in doc.items() if v is not None}


def _kind(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", dict: "a JSON object", int: "an integer", float: "a number"}
    return " or ".join(names.get(x, x.__name__) for x in (t if isinstance(t, tuple) else (t,)))


async def _answer(api: ApiContext, call: Call, allow: bool) -> Response:
    body = json_body(call.body, {"reason": str})

    def answer() -> dict[str, Any]:
        run_id = resolve_run_id(api.store, call.path["run_id"])
        step, who = call.path["step_id"], actor_of(call.token)
        if allow:
            control.approve(api.runtime, run_id, step, reason=body.get("reason"), actor=who)
        else:
            control.deny(api.runtime, run_id, step, body.get("reason", ""), actor=who)
        return {"run_id": run_id, "step_id": step, "answer": "approved" if allow else "denied", "actor": who}

    return json_reply(await blocking(answer))


async def approve_step(api: ApiContext, call: Call) -> Response:
    return await _answer(api, call, True)


async def deny_step(api: ApiContext, call: Call) -> Response:
    return await _answer(api, call, False)


async def pause_run(api: ApiContext, call: Call) -> Response:
    def pause() -> dict[str, Any]:
        run_id = resolve_run_id(api.store, call.path["run_id"])
        return {"run_id": run_id, "paused": control.pause(api.runtime, run_id, actor=actor_of(call.token))}

    return json_reply(await blocking(pause))


async def resume_run(api: ApiContext, call: Call) -> Response:
    body = json_body(call.body, {"patch": dict})

    def resume() -> dict[str, Any]:
        run_id = resolve_run_id(api.store, call.path["run_id"])
        patched = control.resume(api.runtime, run_id, patches=body.get("patch"), actor=actor_of(call.token))
        return {"run_id": run_id, "patched": patched}

    return json_reply(await blocking(resume))


async def fork_run(api: ApiContext, call: Call) -> Response:
    body = json_body(call.body, {"from": str, "patch": dict})
    if "from" not in body:
        raise BadRequest("the body has bad fields", 422, ["from: missing, expected the first step to run again"])

    def fork() -> dict[str, Any]:
        run_id = resolve_run_id(api.store, call.path["run_id"])
        new_id = operations.fork(api.store, run_id, body["from"], patch=body.get("patch"),
                                 actor=actor_of(call.token))
        return {"run_id": new_id, "forked_from": run_id, "from_step": body["from"]}

    doc = await blocking(fork)
    return json_reply(doc, 201, {"location": f"/v1/runs/{doc['run_id']}"})


async def replay_run(api: ApiContext, call: Call) -> Response:
    number = (int, float)
    body = json_body(call.body, {"tolerance_tokens": int, "tolerance_cost_usd": number, "timeout_s": number})
    tokens, cost = body.get("tolerance_tokens", 0), float(body.get("tolerance_cost_usd", 0.0))
    timeout = float(body.get("timeout_s", MAX_REPLAY_TIMEOUT_S))
    problems = ([f"tolerance_tokens: got {tokens}, expected 0 or more"] * (tokens < 0)
                + [f"tolerance_cost_usd: got {cost}, expected a finite number, 0 or more"]
                * (not math.isfinite(cost) or cost < 0)
                + [f"timeout_s: got {timeout}, expected 0.1 to {MAX_REPLAY_TIMEOUT_S:g}"]
                * (not 0.1 <= timeout <= MAX_REPLAY_TIMEOUT_S))
    if problems:
        raise BadRequest("the body has bad fields", 422, problems)

    def replay() -> dict[str, Any]:
        run_id = resolve_run_id(api.store, call.path["run_id"])
        reports = asyncio.run(operations.replay(api.store, [run_id], tolerance=Tolerance(tokens, cost),
                                                timeout_s=timeout))
        return reports[0].to_dict()

    return json_reply(await blocking(replay))


_LOOKUP: Final = {400: "bad or ambiguous run id, or a body that is not JSON", 404: "no such run"}
_BAD_BODY: Final = "a bad body field (`problems` names each)"
_REASON: Final = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": control.MAX_REASON_CHARS}}}
_ANSWER: Final = {"type": "object", "properties": {k: {"type": "string"} for k in ("run_id", "step_id", "answer",
                                                                                     "actor")}}
_PATCH: Final = {"type": "object", "description": "step id -> the step's new inputs (checked as at submit)",
                 "additionalProperties": {"type": "object"}}


def _json(schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


ROUTES: Final = (
    ApiRoute("POST", "/v1/runs/{run_id}/steps/{step_id}/approve", Scope.CONTROL, approve_step,
             "Approve a step waiting for approval",
             "The step (or an agent's tool call) is queued and runs; `approval_granted` and a `human_approval` "
             "decision name the token as the actor.", params=(RUN_ID_PARAM, STEP_PARAM), max_body=_SMALL_BODY,
             body=_json(_REASON), responses={200: "approved", **_LOOKUP, 404: "no such run or step",
                                             409: "the step is not waiting for approval", 422: _BAD_BODY},
             response_schema=_ANSWER),
    ApiRoute("POST", "/v1/runs/{run_id}/steps/{step_id}/deny", Scope.CONTROL, deny_step,
             "Deny a step waiting for approval, with a reason",
             "The step is denied and its run fails (an agent's tool call is answered to the model as a tool "
             "error instead).", params=(RUN_ID_PARAM, STEP_PARAM), max_body=_SMALL_BODY,
             body=_json({**_REASON, "required": ["reason"]}, True),
             responses={200: "denied", **_LOOKUP, 404: "no such run or step",
                        409: "the step is not waiting for approval", 422: "no reason, or a bad body field"},
             response_schema=_ANSWER),
    ApiRoute("POST", "/v1/runs/{run_id}/pause", Scope.CONTROL, pause_run, "Pause a run",
             "No new step starts; running attempts finish. `paused` is false when it was already paused.",
             params=(RUN_ID_PARAM,), responses={200: "`run_id`, `paused`", **_LOOKUP, 409: "the run has ended"},
             response_schema={"type": "object", "properties": {"run_id": {"type": "string"},
                                                                 "paused": {"type": "boolean"}}}),
    ApiRoute("POST", "/v1/runs/{run_id}/resume", Scope.CONTROL, resume_run,
             "Resume a paused run, optionally with new inputs for steps not started",
             "A bad patch changes nothing. Each patched step gets a `step_patched` event naming the actor and "
             "the input keys changed.", params=(RUN_ID_PARAM,), max_body=MAX_SPEC_BYTES,
             body=_json({"type": "object", "properties": {"patch": _PATCH}}),
             responses={200: "`run_id`, `patched` (step ids)", **_LOOKUP, 409: "the run is not paused",
                        413: "body over 1 MiB", 422: "a bad patch (`problems` names each)"},
             response_schema={"type": "object", "properties": {"run_id": {"type": "string"},
                                                                 "patched": {"type": "array",
                                                                             "items": {"type": "string"}}}}),
    ApiRoute("POST", "/v1/runs/{run_id}/fork", Scope.CONTROL, fork_run,
             "Fork a run from a step (or an agent turn such as `agent.t3`)",
             "A new run reuses the recorded results before `from` and runs the rest on the workers.",
             params=(RUN_ID_PARAM,), max_body=MAX_SPEC_BYTES,
             body=_json({"type": "object", "required": ["from"],
                         "properties": {"from": {"type": "string"}, "patch": _PATCH}}, True),
             responses={201: "`run_id` (the fork), `forked_from`, `from_step`", **_LOOKUP, 413: "body over 1 MiB",
                        422: "an unknown `from` step or a bad patch (nothing stored)"},
             response_schema={"type": "object", "properties": {k: {"type": "string"} for k in (
                 "run_id", "forked_from", "from_step")}}),
    ApiRoute("POST", "/v1/runs/{run_id}/replay", Scope.CONTROL, replay_run,
             "Replay a run from its record and report the drift",
             "Executes the run again in a scratch store on the server with every llm, tool and http result "
             "taken from the record (nothing external is called, the store is not written). `ok` is false "
             "when it did not reproduce the record or drifted past the tolerance.",
             params=(RUN_ID_PARAM,), max_body=_SMALL_BODY,
             body=_json({"type": "object", "properties": {
                 "tolerance_tokens": {"type": "integer", "minimum": 0},
                 "tolerance_cost_usd": {"type": "number", "minimum": 0},
                 "timeout_s": {"type": "number", "minimum": 0.1, "maximum": MAX_REPLAY_TIMEOUT_S}}}),
             responses={200: "the report (as `fleetforge runs replay --json`)", **_LOOKUP, 422: _BAD_BODY},
             response_schema={"type": "object", "properties": {"run_id": {"type": "string"},
                                                                 "ok": {"type": "boolean"},
                                                                 "steps": {"type": "array",
                                                                           "items": {"type": "object"}}}}),
)
