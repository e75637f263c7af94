"""The pieces every endpoint of the HTTP API is made of: a route (method, path, scope, handler, docs),
the call it handles, the context it runs in, and JSON replies.

An endpoint is one `ApiRoute` in a module's `ROUTES` and one line in `table.py`: the app, the
authentication check and the OpenAPI document are all derived from that table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, TypeVar

import anyio.to_thread
from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response

from fleetforge.core.runtime import Runtime
from fleetforge.domain.errors import ConfigError
from fleetforge.domain.tokens import Scope, TokenRow
from fleetforge.ports.store import Store
from fleetforge.ports.tokens import TokenStore

__all__ = [
    "NO_BODY",
    "ApiContext",
    "ApiRoute",
    "BadRequest",
    "Call",
    "Param",
    "blocking",
    "iso",
    "json_reply",
    "query_int",
]

T = TypeVar("T")
NO_BODY: Final = 0
_SECURITY_HEADERS: Final = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


class BadRequest(ConfigError):
    """A request the API cannot take as sent (HTTP 400, or `status`); the message names the fix."""

    def __init__(self, message: str, status: int = 400, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.problems = status, problems


@dataclass
class ApiContext:
    """What handlers share: the store (runs and tokens), a runtime on it, and stream settings."""

    store: Store
    tokens: TokenStore
    runtime: Runtime
    poll_s: float = 0.2
    heartbeat_s: float = 15.0
    closing: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated request as a handler sees it (the body already read within its limit)."""

    path: Mapping[str, str]
    query: QueryParams
    headers: Headers
    body: bytes
    token: TokenRow | None


@dataclass(frozen=True, slots=True)
class Param:
    """A query, path or header parameter, for the OpenAPI document."""

    name: str
    where: str  # query | path | header
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


Handler = Callable[[ApiContext, Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One endpoint: who may call it (`scope`; None only for the public OpenAPI document) and what it does.

    `max_body` is the request body limit in bytes after decompression (0: the body is not read);
    `body` describes it and `responses` maps status codes to what they mean, for the OpenAPI document.
    """

    method: str
    path: str
    scope: Scope | None
    handler: Handler
    summary: str
    description: str = ""
    params: tuple[Param, ...] = ()
    max_body: int = NO_BODY
    body: Mapping[str, Any] | None = None
    responses: Mapping[int, str] = field(default_factory=dict)
    response_schema: Mapping[str, Any] | None = None
    media_type: str = "application/json"

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (the stores block) in a worker thread."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


def json_reply(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response with the API's security headers."""
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status, {**_SECURITY_HEADERS, **(headers or {})}, media_type="application/json")


def iso(us: int | None) -> str | None:
    """Microseconds since the epoch as RFC 3339 UTC with microseconds; None for None."""
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="microseconds")


def query_int(query: QueryParams, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]; BadRequest naming it otherwise."""
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name}: got {raw!r:.40}, expected an integer from {lo} to {hi}")
    return int(raw)
