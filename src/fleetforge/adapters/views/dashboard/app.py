"""The built-in dashboard: a web page over the analytics tables and the run store.

Panels run the same SQL files as the Grafana dashboard (`deploy/otel/dashboards/panels/*.sql`),
expanded the way Grafana's ClickHouse plugin expands them. Read-only unless it is given a `control`
token: then the run drill-down's approve/deny/pause/resume buttons POST here (see control.py).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs

import anyio.to_thread

from fleetforge.adapters.http.server import (
    BackgroundServer,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    UnsupportedEncoding,
    read_body,
)
from fleetforge.adapters.views.dashboard.control import MAX_BODY, DashboardControl
from fleetforge.adapters.views.dashboard.drilldown import run_view, ts
from fleetforge.adapters.views.dashboard.panel_queries import load_panels
from fleetforge.core.panels import PanelQuery, expand
from fleetforge.core.runs import AmbiguousRunId, resolve_run_id
from fleetforge.domain.errors import FleetForgeError, NotFoundError
from fleetforge.ports.analytics import AnalyticsStore
from fleetforge.ports.store import Store

__all__ = ["Dashboard", "DashboardServer"]

log = logging.getLogger("fleetforge.dashboard")
_STATIC = resources.files("fleetforge.adapters.views.dashboard").joinpath("static")
_MAX_RANGE_S = 366 * 86_400


@dataclass
class Dashboard:
    """The page's data: panels from `analytics`, runs from `store` (either may be None); `control` turns
    on the operator buttons."""

    analytics: AnalyticsStore | None
    store: Store | None
    control: DashboardControl | None = None

    def __post_init__(self) -> None:
        self.panels = load_panels()
        self._ready_seen = False
        self._names: tuple[float, list[str], list[str]] = (0.0, [], [])
        self._lock = threading.Lock()

    def _ready(self) -> bool:
        """The derived tables exist (the dashboard never creates them: it only reads)."""
        if self._ready_seen or self.analytics is None:
            return self._ready_seen
        found = self.analytics.rows(
            "SELECT count() FROM system.tables WHERE database = 'telemetry' AND name IN "
            "('run_events', 'run_latency_metrics', 'step_retry_heatmap', 'budget_burndown', "
            "'policy_decision_rates', 'tool_error_taxonomy')")
        self._ready_seen = bool(found) and int(found[0][0]) == 6
        return self._ready_seen

    def _workspaces_apps(self) -> tuple[list[str], list[str]]:
        """Known workspaces and apps (from the smallest derived table), cached for 10 seconds."""
        with self._lock:
            at, workspaces, apps = self._names
            if time.monotonic() - at < 10 or not self._ready():
                return workspaces, apps
            assert self.analytics is not None
            rows = self.analytics.rows(
                "SELECT arraySort(groupUniqArray(workspace)), arraySort(groupUniqArray(app)) "
                "FROM telemetry.budget_burndown")
            workspaces, apps = (list(rows[0][0]), list(rows[0][1])) if rows else ([], [])
            self._names = (time.monotonic(), workspaces, apps)
            return workspaces, apps

    def meta(self) -> dict[str, Any]:
        workspaces, apps = self._workspaces_apps()
        return {"workspaces": workspaces, "apps": apps, "panels": sorted(self.panels),
                "analytics": self.analytics.backend if self.analytics else None,
                "store": self.store.backend if self.store else None, "control": self.control is not None}

    def panel(self, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        if name not in self.panels:
            raise KeyError(name)
        t_from, t_to = _range(query)
        if self.analytics is None or not self._ready():
            return {"columns": [], "rows": []}
        known = dict(zip(("workspace", "app"), self._workspaces_apps(), strict=True))
        variables = {key: [query[key][0]] if query.get(key, [""])[0] else known[key] for key in known}
        interval = max(60, ((t_to - t_from) // 120) // 60 * 60)
        sql = expand(self.panels[name], PanelQuery(t_from, t_to, interval, variables))
        doc = json.loads(self.analytics.text(sql, "JSONCompact"))
        return {"columns": [c["name"] for c in doc["meta"]], "rows": doc["data"]}

    def runs(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        workspace = query.get("workspace", [""])[0] or None
        app = query.get("app", [""])[0] or None
        rows = self.store.list_runs(workspace=workspace, limit=200)
        return [
            {"run_id": r.id, "workspace": r.workspace, "app": r.app, "status": str(r.status),
             "created_at": ts(r.created_us), "error_kind": r.error_kind,
             "duration_s": (r.finished_us - r.created_us) / 1e6 if r.finished_us else None}
            for r in rows if app is None or r.app == app
        ][:50]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The drill-down (see drilldown.py) of the run `run_id` names (its id or a unique prefix, like git);
        None when there is no such run or no store. ValueError when the prefix names several runs."""
        if self.store is None:
            return None
        try:
            return run_view(self.store, resolve_run_id(self.store, run_id))
        except NotFoundError:
            return None
        except AmbiguousRunId as exc:
            raise ValueError(str(exc)) from None


def _range(query: dict[str, list[str]]) -> tuple[int, int]:
    now = int(datetime.now(tz=UTC).timestamp())
    try:
        t_to = int(query.get("to", [str(now)])[0])
        t_from = int(query.get("from", [str(t_to - 3600)])[0])
    except ValueError:
        raise ValueError("from/to: expected Unix seconds") from None
    if not 0 <= t_from < t_to or t_to - t_from > _MAX_RANGE_S:
        raise ValueError("from/to: expected 0 <= from < to and a range of at most 366 days")
    return t_from, t_to


class DashboardServer:
    """Serves the page and its JSON API on `host:port` (loopback by default) from a background thread.

    Read-only (GET and HEAD) unless the dashboard has a control token. A Host header naming anything but
    an IP address, localhost or one of `allowed_hosts` gets 421 (DNS rebinding).
    """

    def __init__(
        self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8080, allowed_hosts: Iterable[str] = ()
    ) -> None:
        self._app = _App(dashboard)
        self._server = BackgroundServer(
            self._app, host=host, port=port, name="dashboard", allowed_hosts=allowed_hosts, port_flag="--port"
        )

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> DashboardServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


_RUN_PATH = re.compile(r"^/api/runs/([\w.-]{1,100})$")
_PANEL_PATH = re.compile(r"^/api/panel/(\w{1,64})$")
_STATIC_NAME = re.compile(r"^[\w-]+(?:/[\w-]+)*(?:\.[\w-]+)*$", re.ASCII)
# The page loads its script, styles and data from its own origin only; ECharts' tooltips carry style attributes.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_JSON_ESCAPES: Final = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json_bytes(value: Any) -> bytes:
    """JSON with `<`, `>` and `&` escaped, so no reply can be read as markup even when sniffed."""
    return json.dumps(value, default=str).translate(_JSON_ESCAPES).encode()


class _App:
    """The dashboard's ASGI app: static files and the JSON API; every answer carries the security headers."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if method == "POST" and self.dash.control is not None:
            status, ctype, body = await self._post(self.dash.control, scope, receive)
        elif method not in ("GET", "HEAD"):
            control = self.dash.control is not None
            why = f"method {method} is not allowed here" if control else "the dashboard is read-only"
            status, ctype, body = 405, "application/json", _json_bytes({"error": why})
            extra = ((b"allow", b"GET, HEAD, POST" if control else b"GET, HEAD"),)
        else:
            query = parse_qs(scope["query_string"].decode("latin-1"))
            status, ctype, body = await anyio.to_thread.run_sync(self._get, scope["path"], query)
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                   *_HEADERS, *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _post(self, ctl: DashboardControl, scope: Scope, receive: Receive) -> tuple[int, str, bytes]:
        """A button's POST: same origin and the page's anti-CSRF value first, then the operation."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        why = ctl.refusal(headers)
        if why is not None:
            log.info("refused a control request for %s: %s", scope["path"], why)
            return self._json({"error": why}, 403)
        try:
            body = await read_body(receive, headers.get("content-encoding", ""), limit=MAX_BODY)
        except BodyTooLarge as exc:
            return self._json({"error": str(exc)}, 413)
        except UnsupportedEncoding as exc:
            return self._json({"error": str(exc)}, 415)
        try:
            status, doc = await anyio.to_thread.run_sync(ctl.act, scope["path"], body)
        except FleetForgeError as exc:
            log.warning("dashboard control failed: %s", exc)
            return self._json({"error": str(exc)}, 503)
        except Exception:
            log.exception("dashboard control request for %r failed", scope["path"])
            return self._json({"error": "internal error; see the server log"}, 500)
        return self._json(doc, status)

    def _get(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`; runs in a worker thread (the stores block)."""
        try:
            return self._route(path, query)
        except ValueError as exc:
            return self._json({"error": str(exc)}, 400)
        except FleetForgeError as exc:
            log.warning("dashboard query failed: %s", exc)
            return self._json({"error": str(exc)}, 503)
        except Exception:
            log.exception("dashboard request for %r failed", path)
            return self._json({"error": "internal error; see the server log"}, 500)

    @staticmethod
    def _json(value: Any, status: int = 200) -> tuple[int, str, bytes]:
        return status, "application/json", _json_bytes(value)

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        dash = self.dash
        if path in ("/", "/index.html"):
            page = self._static("index.html")
            if dash.control is None:
                return page
            tag = f'<head>\n  <meta name="fleetforge-csrf" content="{dash.control.csrf()}">'.encode()
            return page[0], page[1], page[2].replace(b"<head>", tag, 1)
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/api/meta":
            return self._json(dash.meta())
        if path == "/api/runs":
            return self._json(dash.runs(query))
        if m := _RUN_PATH.match(path):
            run = dash.run(m.group(1))
            return self._json(run) if run else self._json({"error": "no such run"}, 404)
        if m := _PANEL_PATH.match(path):
            try:
                return self._json(dash.panel(m.group(1), query))
            except KeyError:
                return self._json({"error": f"no panel {m.group(1)!r}"}, 404)
        return self._json({"error": "not found"}, 404)

    def _static(self, name: str) -> tuple[int, str, bytes]:
        if not _STATIC_NAME.match(name):
            return self._json({"error": "not found"}, 404)
        entry = _STATIC.joinpath(name)
        if not entry.is_file():
            return self._json({"error": "not found"}, 404)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return 200, ctype, entry.read_bytes()
