"""Driving Debian's headless Chromium from tests: skip when it is absent, fail under CI=true."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support import need

__all__ = ["CHROMIUM", "FLAGS", "Tab", "console", "dump_dom", "need_chromium", "screenshot"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2200"]
_CONSOLE = re.compile(r':INFO:CONSOLE[^\]]*\] "(.*)", source: (\S*)')


def need_chromium() -> None:
    """Skip the test without Chromium (fail under CI=true)."""
    need(CHROMIUM is not None, "Chromium (Debian package chromium)")


def _run(
    url: str, profile: Path, *extra: str, budget_ms: int, real_time: bool = False
) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    wait = f"--timeout={budget_ms}" if real_time else f"--virtual-time-budget={budget_ms}"
    return subprocess.run([CHROMIUM, *FLAGS, wait, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *extra, url], capture_output=True, timeout=120, check=True, text=True)


def dump_dom(url: str, profile: Path, *, budget_ms: int = 15000, real_time: bool = False) -> tuple[str, str]:
    """(the DOM once `budget_ms` passed, Chromium's stderr with the console messages).

    Virtual time by default (fast, deterministic); `real_time` for pages whose requests may never finish,
    which would hold virtual time still.
    """
    done = _run(url, profile, "--dump-dom", budget_ms=budget_ms, real_time=real_time)
    return done.stdout, done.stderr


def screenshot(url: str, path: Path, profile: Path, *, budget_ms: int = 15000) -> None:
    """Save a PNG of the page after `budget_ms` of virtual time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(url, profile, f"--screenshot={path}", budget_ms=budget_ms)


def console(stderr: str) -> list[tuple[str, str]]:
    """The (message, source URL) pairs the page logged to its console, CSP violations included."""
    return [(m.group(1), m.group(2)) for m in _CONSOLE.finditer(stderr)]


class Tab:
    """One page of a headless Chromium driven over the DevTools protocol: navigate, evaluate, wait.

    For tests that act on a page (click buttons) rather than only read its DOM. Use as a context manager.
    """

    def __init__(self, profile: Path, *, timeout_s: float = 30.0) -> None:
        assert CHROMIUM
        self.timeout_s = timeout_s
        self._proc = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                       "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        try:
            self._ws: ClientConnection = connect(self._page_socket(profile), max_size=None).__enter__()
        except BaseException:
            self._proc.kill()
            raise

    def _page_socket(self, profile: Path) -> str:
        """The DevTools WebSocket URL of the browser's page, once Chromium listens."""
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self._proc.poll() is None, "Chromium did not start"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        return str(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])

    def __enter__(self) -> Tab:
        return self

    def __exit__(self, *exc: object) -> None:
        self._ws.__exit__(None, None, None)
        self._proc.terminate()
        self._proc.wait(30)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a DevTools command; its result (events in between are dropped)."""
        n = next(self._ids)
        self._ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=self.timeout_s))
            if msg.get("id") == n:
                assert "error" not in msg, msg["error"]
                result: dict[str, Any] = msg["result"]
                return result

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href === " + json.dumps(url))

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        done = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in done, done["exceptionDetails"]
        return done["result"].get("value")

    def wait(self, expression: str) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + self.timeout_s
        while not (value := self.eval(expression)):
            assert time.monotonic() < deadline, f"not reached in time: {expression}"
            time.sleep(0.05)
        return value
