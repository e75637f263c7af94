"""The dashboard's operator buttons: approve, deny, pause and resume, given a `control` token.

The browser never holds the token. The page carries a per-load anti-CSRF value (an HMAC of a random
nonce under a per-process key, so nothing is kept per page); a POST must send it back in the
`X-FleetForge-CSRF` header with an `Origin` equal to the dashboard's own. The token is checked
against the store on every POST (a revoked token stops the buttons at once), and the operation is the
one the CLI and the API call (`core/control.py`), with the actor `dashboard:<token name>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Any, Final, cast

import httpx

from fleetforge.adapters.cli.wiring import build_runtime
from fleetforge.core import control
from fleetforge.core.runs import resolve_run_id
from fleetforge.core.runtime import Runtime
from fleetforge.core.tokens import authenticate
from fleetforge.domain.errors import ConfigError, ConflictError, NotFoundError, SpecError
from fleetforge.domain.tokens import Forbidden, Scope, TokenRow, Unauthorized
from fleetforge.ports.store import Store
from fleetforge.ports.tokens import TokenStore

__all__ = ["CSRF_HEADER", "MAX_BODY", "DashboardControl", "same_origin"]

CSRF_HEADER: Final = "x-fleetforge-csrf"
MAX_BODY: Final = 16 * 1024
_ACTION: Final = re.compile(r"^/api/runs/([\w.-]{1,100})/(?:(pause|resume)|steps/([\w.-]{1,200})/(approve|deny))$")


def same_origin(origin: str | None, host: str | None) -> bool:
    """True when `origin` (the request's Origin header) is this server as reached by `host` (its Host
    header, already checked against the allowed names), over http or https."""
    if not origin or not host:
        return False
    return origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}")


class DashboardControl:
    """A `control` token given to the dashboard, and what it lets the page do."""

    def __init__(self, store: Store, token: str, *, key: bytes | None = None) -> None:
        self.store = store
        self._token = token
        self._key = key or secrets.token_bytes(32)
        self._runtime: Runtime | None = None
        self.name = self.check().name  # a wrong token fails at start, not at the first click

    def __repr__(self) -> str:
        return f"DashboardControl(name={self.name!r})"

    def check(self) -> TokenRow:
        """The token's row if it still allows `control`; Unauthorized or Forbidden otherwise."""
        return authenticate(cast(TokenStore, self.store), f"Bearer {self._token}", Scope.CONTROL)

    def csrf(self) -> str:
        """A fresh anti-CSRF value for one page load."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac(nonce)}"

    def csrf_ok(self, value: str | None) -> bool:
        """True for a value `csrf()` made (in this process)."""
        nonce, _, mac = (value or "").partition(".")
        return bool(nonce) and hmac.compare_digest(mac, self._mac(nonce))

    def _mac(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def refusal(self, headers: dict[str, str]) -> str | None:
        """Why a POST with these (lower-case) headers is refused, or None when it may act."""
        if not same_origin(headers.get("origin"), headers.get("host")):
            return "a control request must come from the dashboard's own page (its Origin)"
        if not self.csrf_ok(headers.get(CSRF_HEADER)):
            return "a control request needs the page's anti-CSRF value; reload the dashboard"
        return None

    def act(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Do what a POST to `path` asks: (HTTP status, JSON answer). Blocking (the store)."""
        m = _ACTION.match(path)
        if m is None:
            return 404, {"error": "no such control action"}
        try:
            row = self.check()
        except (Unauthorized, Forbidden) as exc:
            return 403, {"error": f"the dashboard's control token is refused ({exc}); start the dashboard with "
                                  "a valid control token"}
        run_arg, run_action, step, step_action = m.groups()
        actor = f"dashboard:{row.name}"[: control.MAX_ACTOR_CHARS]
        try:
            reason = _reason(body)
            run_id = resolve_run_id(self.store, run_arg)
            rt = self._rt()
            doc: dict[str, Any] = {"run_id": run_id, "actor": actor}
            if step_action == "approve":
                control.approve(rt, run_id, step, reason=reason, actor=actor)
            elif step_action == "deny":
                control.deny(rt, run_id, step, reason or "", actor=actor)
            elif run_action == "pause":
                doc["paused"] = control.pause(rt, run_id, actor=actor)
            else:
                doc["patched"] = control.resume(rt, run_id, actor=actor)
            return 200, doc
        except NotFoundError as exc:
            return 404, {"error": str(exc)}
        except ConflictError as exc:
            return 409, {"error": str(exc)}
        except SpecError as exc:
            return 422, {"error": str(exc), "problems": exc.problems}
        except ConfigError as exc:
            return 400, {"error": str(exc)}

    def _rt(self) -> Runtime:
        if self._runtime is None:
            self._runtime = build_runtime(self.store, httpx.AsyncClient())  # control sends no request
        return self._runtime


def _reason(body: bytes) -> str | None:
    """The optional `reason` of a JSON body `{"reason": "..."}`; ConfigError for anything else."""
    if not body.strip():
        return None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError('the body is not JSON; send {"reason": "..."}') from None
    if not isinstance(doc, dict) or set(doc) - {"reason"} or not isinstance(doc.get("reason", ""), str):
        raise ConfigError('the body is not {"reason": "..."}')
    reason = doc.get("reason")
    return reason if isinstance(reason, str) else None
