"""`fleetforge tokens` and `fleetforge serve` through the real command line: a token printed once and
stored hashed, listed without secrets, revoked; the API serving with it; a loud warning off loopback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.acceptance.test_runs_cli import OK, cli, env


def serve(data: Path, *args: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Start `fleetforge serve` on a free port; the process, its URL and the stderr lines up to it."""
    proc = subprocess.Popen([sys.executable, "-m", "fleetforge", "serve", "--port", "0", "--data-dir", str(data),
                             *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if m := re.search(r"API on (http://\S+/)", line):
            return proc, m.group(1), lines
    raise AssertionError("".join(lines))


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(30)


def test_tokens_create_list_revoke_and_serve(tmp_path: Path) -> None:
    data = tmp_path / "ff"
    made = cli(data, "tokens", "create", "--scope", "submit", "--name", "ci bot")
    token = made.stdout.strip()
    assert re.fullmatch(r"fft_[A-Za-z0-9_-]{43}", token) and "printed once" in made.stderr
    assert token not in made.stderr
    listed = json.loads(cli(data, "tokens", "list", "--json").stdout)
    assert [(t["name"], t["scope"], t["revoked_at"]) for t in listed] == [("ci bot", "submit", None)]
    table = cli(data, "tokens", "list").stdout
    assert listed[0]["id"] in table and token not in table
    assert token.encode() not in b"".join(p.read_bytes() for p in data.glob("state.db*"))

    cli(data, "tokens", "create", "--scope", "admin", code=2)
    cli(data, "tokens", "create", "--scope", "read", "--name", "bad\nname", code=2)
    assert len(json.loads(cli(data, "tokens", "list", "--json").stdout)) == 1  # nothing stored by the refusals

    proc, url, _ = serve(data)
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
            run_id = c.post("/v1/runs", json=OK).json()["run_id"]
            assert c.get(f"/v1/runs/{run_id[:8]}").json()["status"] == "queued"
            assert cli(data, "tokens", "revoke", listed[0]["id"]).stdout.strip() == "revoked"
            refused = c.get("/v1/runs")
            assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    finally:
        assert stop(proc) == 0
    assert cli(data, "tokens", "revoke", listed[0]["id"]).stdout.strip() == "already revoked"
    assert "no token" in cli(data, "tokens", "revoke", "feedfeedfeed", code=3).stderr
    assert "its id" in cli(data, "tokens", "revoke", token, code=2).stderr


def test_serve_warns_loudly_off_loopback(tmp_path: Path) -> None:
    proc, _, lines = serve(tmp_path, "--host", "0.0.0.0")
    assert stop(proc) == 0
    text = "".join(lines)
    assert "WARNING" in text and "TLS" in text and "--behind-tls-proxy" in text
    proc, _, lines = serve(tmp_path, "--host", "0.0.0.0", "--behind-tls-proxy")
    assert stop(proc) == 0
    assert "WARNING" not in "".join(lines)
    proc, _, lines = serve(tmp_path)  # loopback: nothing to warn about
    assert stop(proc) == 0
    assert "WARNING" not in "".join(lines) and "127.0.0.1" in "".join(lines)
