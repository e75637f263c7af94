"""`GET /v1/runs/{id}/events`: a run's events as Server-Sent Events, from the outbox as they commit.

Each event's `id:` is its outbox position (`<xid>-<seq>`, delivery order) and its `data:` the envelope
JSON as stored. The stream ends after the run's terminal event. A client that reconnects with
`Last-Event-ID` resumes right after that event (`core.runs.RunFollower`: no gap, no repeat); when there
is nothing after it and the run has ended, the answer is 204, which tells an EventSource to stop.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Final

import anyio
from starlette.responses import Response, StreamingResponse

from fleetforge.adapters.api.routing import ApiContext, ApiRoute, BadRequest, Call, Param, blocking
from fleetforge.adapters.api.runs import RUN_ID_PARAM
from fleetforge.core.runs import RunFollower, resolve_run_id
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.tokens import Scope
from fleetforge.ports.store import OutboxPosition

__all__ = ["ROUTES", "format_position", "parse_position"]

_POSITION: Final = re.compile(r"(\d{1,20})-(\d{1,20})")
_HEADERS: Final = {"cache-control": "no-store", "x-content-type-options": "nosniff", "x-accel-buffering": "no"}


def format_position(position: OutboxPosition) -> str:
    """An outbox position as an SSE event id: `<xid>-<seq>`."""
    return f"{position[0]}-{position[1]}"


def parse_position(text: str) -> OutboxPosition:
    """The outbox position an SSE event id names; BadRequest otherwise."""
    m = _POSITION.fullmatch(text.strip())
    if m is None:
        raise BadRequest(f"Last-Event-ID: got {text!r:.60}, expected the id of an event of this stream "
                         "(<xid>-<seq>), or no header to start from the run's first event")
    return int(m.group(1)), int(m.group(2))


def _frame(position: OutboxPosition, env: Envelope) -> bytes:
    return f"id: {format_position(position)}\ndata: {env.to_json()}\n\n".encode()


async def _stream(api: ApiContext, follower: RunFollower,
                  first: list[tuple[OutboxPosition, Envelope]]) -> AsyncIterator[bytes]:
    batch, quiet = first, 0.0
    while True:
        for position, env in batch:
            yield _frame(position, env)
        if follower.done or api.closing.is_set():
            return  # after the terminal event; or the server stops: the client resumes elsewhere
        quiet = 0.0 if batch else quiet + api.poll_s
        if quiet >= api.heartbeat_s:
            quiet = 0.0
            yield b": keep-alive\n\n"
        await anyio.sleep(api.poll_s)
        batch = await blocking(follower.poll)


async def run_events(api: ApiContext, call: Call) -> Response:
    raw = call.headers.get("last-event-id") or call.query.get("after")
    after = parse_position(raw) if raw else (0, 0)
    run_id = await blocking(resolve_run_id, api.store, call.path["run_id"])
    follower = RunFollower(api.store, run_id, after=after)
    first = await blocking(follower.poll)
    if follower.done and not first:
        return Response(status_code=204, headers=_HEADERS)
    return StreamingResponse(_stream(api, follower, first), media_type="text/event-stream", headers=_HEADERS)


ROUTES: Final = (
    ApiRoute("GET", "/v1/runs/{run_id}/events", Scope.READ, run_events, "Stream a run's events (Server-Sent Events)",
             "From the run's first event (or after `Last-Event-ID`) in commit order, as they commit, ending "
             "after `run_succeeded`, `run_failed` or `run_canceled`. Each event: `id:` its outbox position, "
             "`data:` the envelope JSON. A `: keep-alive` comment is sent when nothing happened for 15 s.",
             params=(RUN_ID_PARAM,
                     Param("Last-Event-ID", "header", "Resume after this event id (sent by EventSource on "
                                                      "reconnect)."),
                     Param("after", "query", "The same as Last-Event-ID, for clients that cannot set headers.")),
             responses={200: "the stream", 204: "the run has ended and nothing follows Last-Event-ID",
                        400: "bad Last-Event-ID, or a bad or ambiguous run id", 404: "no such run"},
             media_type="text/event-stream"),
)
