"""The OpenAPI 3.1 document of the HTTP API, generated from the route table (never written by hand)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from fleetforge import __version__
from fleetforge.adapters.api.routing import ApiRoute

__all__ = ["SCOPE_KEY", "openapi_document"]

SCOPE_KEY: Final = "x-fleetforge-scope"
_ERROR: Final = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"},
                                "problems": {"type": "array", "items": {"type": "string"}}}}
_ERROR_REF: Final = {"$ref": "#/components/schemas/Error"}
_AUTH_ERRORS: Final = {401: "no token, or a malformed, unknown or revoked one",
                       403: "the token's scope is below the endpoint's"}


def _response(route: ApiRoute, code: int, text: str) -> dict[str, Any]:
    if code >= 400:
        return {"description": text, "content": {"application/json": {"schema": _ERROR_REF}}}
    if code == 204:
        return {"description": text}
    schema = route.response_schema or ({"type": "string"} if route.media_type != "application/json" else {})
    return {"description": text, "content": {route.media_type: {"schema": schema}}}


def _operation(route: ApiRoute) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    if route.description:
        op["description"] = route.description
    if route.params:
        op["parameters"] = [{"name": p.name, "in": p.where, "description": p.description, "schema": dict(p.schema),
                             "required": p.required or p.where == "path"} for p in route.params]
    if route.body is not None:
        op["requestBody"] = dict(route.body)
    responses = dict(route.responses)
    if route.scope is None:
        op["security"] = []
    else:
        op["security"] = [{"bearer": []}]
        op[SCOPE_KEY] = route.scope.value
        op["description"] = (op.get("description", "") + f"\n\nNeeds a token of scope `{route.scope.value}` "
                             "or above.").strip()
        responses.update({k: v for k, v in _AUTH_ERRORS.items() if k not in responses})
    op["responses"] = {str(code): _response(route, code, text) for code, text in sorted(responses.items())}
    return op


def openapi_document(routes: Iterable[ApiRoute]) -> dict[str, Any]:
    """OpenAPI 3.1 for `routes`: each operation with its parameters, body, responses and scope."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = re.sub(r"\{(\w+)(?::\w+)?\}", r"{\1}", route.path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "FleetForge API", "version": __version__,
                 "description": "Submit, inspect, follow and steer runs. Bearer tokens from "
                                "`fleetforge tokens create --scope read|submit|control`; scopes are ordered "
                                "read < submit < control."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "`fft_...` from `fleetforge tokens create`"}},
                       "schemas": {"Error": _ERROR}},
    }
