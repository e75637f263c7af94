"""Driving Debian's headless Chromium from tests: skip when it is absent, fail under CI=true."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support import need

__all__ = ["CHROMIUM", "FLAGS", "console", "dump_dom", "need_chromium", "screenshot"]

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
