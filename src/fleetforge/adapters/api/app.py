"""The HTTP API as a Starlette app, and `ApiServer`, which serves it on the one background HTTP server.

Every route of the table is wrapped the same way: the bearer token is checked against the route's scope
first (401/403 before anything is read or changed), then the body is read within the route's limit
(413 past it, after decompression too), then the handler runs. Errors are JSON `{"error": ...}` with
the problem and its fix; nothing a client sent is echoed into a header, and no token reaches a log.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final, cast

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetforge.adapters.api.openapi import openapi_document
from fleetforge.adapters.api.routing import ApiContext, ApiRoute, BadRequest, Call, blocking, json_reply
from fleetforge.adapters.api.table import ROUTES
from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.adapters.http.server import BackgroundServer, BodyTooLarge, UnsupportedEncoding, read_body
from fleetforge.core.runs import AmbiguousRunId
from fleetforge.core.tokens import authenticate
from fleetforge.domain.errors import (
    ConfigError,
    ConflictError,
    FleetForgeError,
    NotFoundError,
    SpecError,
    StoreError,
    StoreFull,
)
from fleetforge.domain.secrets import redact_text
from fleetforge.domain.tokens import Forbidden, Unauthorized
from fleetforge.ports.store import Store
from fleetforge.ports.tokens import TokenStore

__all__ = ["ApiServer", "api_context", "build_app", "is_loopback"]

log = logging.getLogger("fleetforge.api")
_CHALLENGE: Final = 'Bearer realm="fleetforge"'


def _error(exc: BaseException) -> Response:
    """The JSON answer for an exception raised while handling a request."""
    problems: list[str] | None = None
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        status, headers = 401, {"www-authenticate": _CHALLENGE}
    elif isinstance(exc, Forbidden):
        status, headers = 403, {"www-authenticate": f'{_CHALLENGE}, error="insufficient_scope"'}
    elif isinstance(exc, BadRequest):
        status, problems = exc.status, exc.problems
    elif isinstance(exc, SpecError):
        status, problems = 422, exc.problems
    elif isinstance(exc, BodyTooLarge):
        status = 413
    elif isinstance(exc, UnsupportedEncoding):
        status = 415
    elif isinstance(exc, AmbiguousRunId | ConfigError):
        status = 400
    elif isinstance(exc, NotFoundError):
        status = 404
    elif isinstance(exc, ConflictError):
        status = 409
    elif isinstance(exc, StoreError | StoreFull):
        log.warning("API request failed: %s", redact_text(str(exc)))
        status = 503
    elif isinstance(exc, FleetForgeError):
        status = 500
    else:
        log.error("API request failed: %s: %s", type(exc).__name__, redact_text(str(exc)))
        return json_reply({"error": "internal error; see the server log"}, 500)
    doc: dict[str, Any] = {"error": redact_text(str(exc)) if problems is None else str(exc)}
    if problems is not None:
        doc["problems"] = problems
    if isinstance(exc, AmbiguousRunId):
        doc["candidates"] = exc.candidates
    if isinstance(exc, Forbidden):
        doc.update(held=exc.have.value, needed=exc.need.value)
    return json_reply(doc, status, headers)


def _endpoint(api: ApiContext, route: ApiRoute) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            token = None
            if route.scope is not None:
                token = await blocking(authenticate, api.tokens, request.headers.get("authorization"), route.scope)
            body = b""
            if route.max_body:
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > route.max_body:
                    raise BodyTooLarge(route.max_body, decoded=False)
                body = await read_body(request.receive, request.headers.get("content-encoding", ""),
                                       limit=route.max_body)
            call = Call(request.path_params, request.query_params, request.headers, body, token)
            return await route.handler(api, call)
        except (Unauthorized, Forbidden) as exc:
            log.info("refused %s %s: %s", request.method, redact_text(request.url.path), redact_text(str(exc)))
            return _error(exc)
        except Exception as exc:
            return _error(exc)

    endpoint.__name__ = route.operation_id
    return endpoint


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        return json_reply({"error": f"method {request.method} is not allowed here; see /openapi.json"}, 405)
    return json_reply({"error": "no such endpoint; the routes are listed in /openapi.json"}, status)


def build_app(api: ApiContext, routes: Sequence[ApiRoute] = ROUTES) -> Starlette:
    """The Starlette app serving `routes` on `api`, plus the public `GET /openapi.json`."""
    document = json_reply(openapi_document(routes))

    async def openapi(request: Request) -> Response:
        return Response(document.body, headers=dict(document.headers))

    table = [Route(r.path, _endpoint(api, r), methods=[r.method]) for r in routes]
    table.append(Route("/openapi.json", openapi, methods=["GET"]))
    return Starlette(routes=table, exception_handlers={HTTPException: _not_found})


def is_loopback(host: str) -> bool:
    """True when binding `host` keeps the listener on this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_context(store: Store, *, poll_s: float = 0.2, heartbeat_s: float = 15.0) -> ApiContext:
    """The context the API runs in on `store`: submit and cancel go through the standard runtime."""
    runtime = build_runtime(store, httpx.AsyncClient())  # submit and cancel send no request
    return ApiContext(store, cast(TokenStore, store), runtime, poll_s=poll_s, heartbeat_s=heartbeat_s)


class ApiServer:
    """`build_app` on the one background HTTP server (loopback by default, Host check, body limits)."""

    def __init__(self, api: ApiContext, *, host: str = "127.0.0.1", port: int = 8787,
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.api = api
        self._server = BackgroundServer(build_app(api), host=host, port=port, name="api",
                                        allowed_hosts=allowed_hosts, port_flag="--port")

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> ApiServer:
        self._server.start()
        return self

    def stop(self) -> None:
        """End open event streams (their clients resume with Last-Event-ID), then stop serving."""
        self.api.closing.set()
        self._server.stop()
