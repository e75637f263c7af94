"""Bad input to the real command line: malformed specs, arguments and settings. Each case must exit
non-zero with a clear message naming the problem, print no traceback, and store nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PLUGINS = str(Path(__file__).resolve().parents[2] / "plugins")
D = "{d}"  # replaced by the case's data dir
DD = ("--data-dir", D)


def spec(*steps: dict[str, Any], **top: Any) -> str:
    return json.dumps({"steps": list(steps) or [noop("a")], **top})


def noop(step_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "tool", "inputs": {"tool": "noop"}, "depends_on": list(deps), **extra}


def uses(step_id: str, *deps: str, q: str) -> dict[str, Any]:
    """A noop step whose input `q` holds a reference."""
    return {"id": step_id, "type": "tool", "inputs": {"tool": "noop", "q": q}, "depends_on": list(deps)}


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    expect: str  # must appear in stderr (whitespace-normalized)
    spec: str | bytes | None = None  # written to spec.json and passed where the args say "{spec}"
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    stdin: str = ""


# 9 anchors a..i, each a list of 9 references to the previous one: 9**9 values from ~400 bytes
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))


def submit(text: str | bytes, expect: str) -> Case:
    return Case(("submit", "{spec}", *DD), expect, spec=text)


def worker_env(name: str, value: str, expect: str) -> Case:
    return Case(("worker", "--until-idle", *DD), expect, env={name: value})


CASES: dict[str, Case] = {
    # -- specs: syntax and shape
    "json-syntax-error": submit('{"steps": [', "spec.json:1:12: invalid JSON: Expecting value"),
    "yaml-syntax-error": submit("steps:\n  - id: a\n   type: llm\n", "spec.json:3:4: invalid YAML"),
    "json-duplicate-key": submit('{"steps": [], "steps": []}', "got duplicate key 'steps', expected each key once"),
    "empty-file": submit("", "got an empty document, expected a mapping with a 'steps' list"),
    "blank-file": submit("  \n\n", "got an empty document"),
    "binary-file": submit(b"\x00\x01\x02{", "invalid YAML: unacceptable character #x0000"),
    "oversize-spec": submit(spec(noop("a", pad="x" * (1024 * 1024))),
                            "expected at most 1048576 bytes (1 MiB)"),
    "yaml-alias-bomb": submit(ALIAS_BOMB, "spec.json:7:4: got YAML aliases that expand to more than 1048576 values"),
    "non-utf8-file": submit(b'{"steps": [{"id": "caf\xe9", "type": "tool"}]}',
                            "spec.json:1: got bytes that are not UTF-8 at byte offset 22 (0xe9), expected a UTF-8 "
                            "text file"),
    "non-utf8-yaml-second-line": submit(b"steps:\n- {id: a, type: tool, inputs: {tool: \xff\xfe}}\n",
                                        "spec.json:2: got bytes that are not UTF-8 at byte offset 44 (0xff)"),
    "top-level-list": submit("[1, 2]", "got [1, 2] at the top level, expected a mapping with 'steps'"),
    "top-level-scalar": submit("hello\n", "got 'hello' at the top level, expected a mapping"),
    "missing-file": Case(("submit", "no-such-spec.json", *DD), "spec file 'no-such-spec.json' does not exist"),
    "directory-not-file": Case(("submit", D, *DD), "is not a file; pass a JSON or YAML run spec"),
    "stdin-empty": Case(("submit", "-", *DD), "<stdin>: got an empty document"),
    "stdin-yaml-cycle": Case(("submit", "-", *DD), "<stdin>: steps: cycle a -> b -> a, expected an acyclic graph",
                             stdin="steps:\n- {id: a, type: tool, inputs: {tool: noop}, depends_on: [b]}\n"
                                   "- {id: b, type: tool, inputs: {tool: noop}, depends_on: [a]}\n"),
    # -- specs: validation
    "missing-steps": submit(json.dumps({"workspace": "acme"}), "steps: missing, expected a non-empty list"),
    "empty-steps": submit(json.dumps({"steps": []}), "steps: got [], expected a non-empty list"),
    "unknown-top-key": submit(json.dumps({"step": []}), "step: unknown key, expected one of"),
    "cycle": submit(spec(noop("a", "c"), noop("b", "a"), noop("c", "b")),
                    "steps: cycle a -> c -> b -> a, expected an acyclic graph"),
    "self-dependency": submit(spec(noop("a", "a")), "a step cannot depend on itself"),
    "unknown-dependency": submit(spec(noop("a"), noop("b", "nope")),
                                 "steps[1].depends_on: got 'nope', expected the id of another step (known: a, b)"),
    "duplicate-ids": submit(spec(noop("a"), noop("a")),
                            "steps[1].id: got 'a', expected a unique step id (steps[0] has it too)"),
    "bad-step-id": submit(spec(noop("has space")), "steps[0].id: got 'has space', expected a string matching"),
    "unknown-step-type": submit(spec({"id": "a", "type": "shell", "inputs": {}}),
                                "steps[0].type: got 'shell', expected one of llm, tool, http"),
    "negative-run-budget": submit(spec(budget={"tokens": -5}), "budget.tokens: got -5, expected an integer >= 0"),
    "negative-step-budget": submit(spec(noop("a", policy={"budget": {"cost": -0.5}})),
                                   "steps[0].policy.budget.cost: got -0.5, expected a number >= 0"),
    "unknown-run-pack": submit(spec(packs=["firewall"]), "packs[0]: got 'firewall', expected a known pack"),
    "unknown-step-pack": submit(spec(noop("a", policy={"packs": [{"name": "antivirus"}]})),
                                "steps[0].policy.packs[0].name: got 'antivirus', expected a known pack"),
    "bad-pii-mode": submit(spec(packs=[{"name": "pii_redaction", "mode": "shred"}]),
                           "packs[0].mode: got 'shred', expected one of redact, deny, allow"),
    "bad-acl-option": submit(spec(packs=[{"name": "tool_acl", "deny": "shell"}]),
                             "packs[0].deny: got 'shell', expected a list of tool names"),
    "bad-caps-option": submit(spec(packs=[{"name": "budget_caps", "max_tokens": 0}]),
                              "packs[0].max_tokens: got 0, expected a positive integer"),
    "bad-caps-huge-cost": submit(spec(packs=[{"name": "budget_caps", "max_cost": 1e20}]),
                                 "packs[0].max_cost: got 1e+20, expected a positive number of USD <= 1000000000000"),
    "max-attempts-zero": submit(spec(noop("a", execution={"max_attempts": 0})),
                                "steps[0].execution.max_attempts: got 0, expected an integer >= 1"),
    "backoff-factor-below-one": submit(spec(noop("a", execution={"retry_backoff_factor": 0.5})),
                                       "steps[0].execution.retry_backoff_factor: got 0.5"),
    "llm-without-prompt": submit(spec({"id": "a", "type": "llm", "inputs": {"model": "sim-small"}}),
                                 "steps[0].inputs.prompt: missing"),
    # -- data between steps (docs/runtime.md, "Data between steps")
    "ref-unknown-step": submit(spec(uses("a", q="${{ steps.nope.output.text }}")),
                               "spec.json: steps[0].inputs.q: got '${{ steps.nope.output.text }}', expected a known "
                               "step id"),
    "ref-not-an-ancestor": submit(spec(noop("a"), uses("b", q="${{ steps.a.output }}")),
                                  "expected a step 'b' depends on, directly or transitively (add 'a' to depends_on"),
    "ref-bad-path": submit(spec(noop("a"), uses("b", "a", q="${{ steps.a.output.x[-1] }}")),
                           "steps[1].inputs.q: got '${{ steps.a.output.x[-1] }}', expected ${{ inputs.NAME... }} or"),
    "run-inputs-schema": submit(spec(inputs={"ticket": 7}, input_schema={"properties": {"ticket": {"type": "string"}}}),
                                "inputs.ticket: got 7, expected a value input_schema accepts (7 is not of type "
                                "'string')"),
    "run-inputs-not-object": submit(spec(inputs="T-1"), "inputs: got 'T-1', expected a mapping (a JSON object)"),
    "run-output-unknown-step": submit(spec(outputs={"answer": "${{ steps.z.output }}"}),
                                      "outputs.answer: got '${{ steps.z.output }}', expected a known step id"),
    "http-bad-url": submit(spec({"id": "a", "type": "http", "inputs": {"url": "ftp://x"}}),
                           "steps[0].inputs.url: got 'ftp://x', expected an http:// or https:// URL"),
    # -- arguments
    "worker-concurrency-zero": Case(("worker", "--concurrency", "0", *DD), "Invalid value for '--concurrency'"),
    "worker-concurrency-env-zero": Case(("worker", *DD), "Invalid value for '--concurrency'",
                                        env={"FLEETFORGE_WORKER_CONCURRENCY": "0"}),
    "runs-list-bad-status": Case(("runs", "list", "--status", "bogus", *DD),
                                 "--status: got 'bogus', expected one of canceled, failed, paused, queued, running"),
    "runs-list-limit-zero": Case(("runs", "list", "--limit", "0", *DD), "Invalid value for '--limit'"),
    "runs-get-unknown": Case(("runs", "get", "nope", *DD), "no run 'nope'; list runs with", code=3),
    "runs-cancel-unknown": Case(("runs", "cancel", "nope", *DD), "no run 'nope'", code=3),
    "demo-zero-runs": Case(("demo", "--runs", "0", "--no-serve", "--json", *DD), "Invalid value for '--runs'"),
    "demo-negative-seed": Case(("demo", "--seed", "-1", "--no-serve", *DD), "Invalid value for '--seed'"),
    "unknown-command": Case(("frobnicate",), "No such command 'frobnicate'"),
    # -- settings
    "store-url-unknown-scheme": Case(("runs", "list"), "store URL: got 'mysql://u@h/db', expected sqlite:///",
                                     env={"FLEETFORGE_STORE_URL": "mysql://u@h/db"}),
    "store-url-memory": Case(("runs", "list"), "store URL: got 'sqlite:///:memory:'",
                             env={"FLEETFORGE_STORE_URL": "sqlite:///:memory:"}),
    "store-url-secret-hidden": Case(("runs", "list"), "got 'mysql://u:***@h/db'",
                                    env={"FLEETFORGE_STORE_URL": "mysql://u:hunter2@h/db"}),
    "exporter-url-secrets-hidden": Case(
        ("exporters", "run", "--until-idle", *DD), "LANGSMITH_API_URL: got 'http://u:***@127.0.0.1:1/?api_key=***#***'",
        env={"FLEETFORGE_TRACE_EXPORTERS": "langsmith", "LANGSMITH_API_KEY": "lsv2-hunter2",
             "FLEETFORGE_PLUGINS_DIR": PLUGINS, "LANGSMITH_API_URL": "http://u:hunter2@127.0.0.1:1/?api_key=sk-hunter2#hunter2"}),
    "otlp-endpoint-bad-port-secret-hidden": Case(
        ("demo", "--runs", "1", "--no-serve", *DD), "OTEL_EXPORTER_OTLP_ENDPOINT: got 'http://h:99999/?token=***'",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:99999/?token=hunter2"}),
    "store-unreachable": Case(("runs", "list"), "127.0.0.1", code=1,
                              env={"FLEETFORGE_STORE_URL": "postgresql://nobody@127.0.0.1:1/x"}),
    "data-dir-is-a-file": Case(("runs", "list", "--data-dir", "{spec}"), "cannot open SQLite store", code=1,
                               spec="not a folder"),
    "app-budgets-no-app": worker_env("FLEETFORGE_APP_BUDGETS", "acme=tokens:5",
                                     "FLEETFORGE_APP_BUDGETS: got 'acme=tokens:5', expected 'workspace/app=...'"),
    "app-budgets-not-a-number": worker_env("FLEETFORGE_APP_BUDGETS", "acme/bot=tokens:lots",
                                           "FLEETFORGE_APP_BUDGETS: got 'acme/bot=tokens:lots'"),
    "app-budgets-negative": worker_env("FLEETFORGE_APP_BUDGETS", "acme/bot=cost:-1", "with limits >= 0"),
    "app-budgets-unknown-limit": worker_env("FLEETFORGE_APP_BUDGETS", "acme/bot=calls:5",
                                            "expected 'workspace/app=tokens:N,cost:USD'"),
    "app-budgets-huge-cost": worker_env("FLEETFORGE_APP_BUDGETS", "acme/bot=cost:1e20",
                                        "FLEETFORGE_APP_BUDGETS: got 'acme/bot=cost:1e20', expected tokens from 0 to "
                                        "9223372036854775807 and cost from 0 to 1000000000000 USD"),
    "app-budgets-huge-tokens": Case(("submit", "{spec}", *DD), "got 'acme/bot=tokens:99999999999999999999', expected",
                                    spec=spec(workspace="acme", app="bot"),
                                    env={"FLEETFORGE_APP_BUDGETS": "acme/bot=tokens:99999999999999999999"}),
    "app-budgets-infinite-cost": worker_env("FLEETFORGE_APP_BUDGETS", "acme/bot=cost:1e400",
                                            "got 'acme/bot=cost:1e400', expected tokens from 0"),
    "inflight-cost-huge": worker_env("FLEETFORGE_MAX_INFLIGHT_COST", "1e20", "got '1e20', expected a finite number"),
    "inflight-tokens-huge": worker_env("FLEETFORGE_MAX_INFLIGHT_TOKENS", "99999999999999999999",
                                       "expected a whole number from 0 to 9223372036854775807"),
    "lease-huge": worker_env("FLEETFORGE_LEASE_MS", "99999999999999999999",
                             "expected a whole number of milliseconds from 1 to 31536000000"),
    "spec-huge-budget-cost": submit(spec(budget={"cost": 1e20}), "budget.cost: got 1e+20, expected a number <= "),
    "spec-infinite-budget-cost": submit('{"steps": [{"id": "a", "type": "tool", "inputs": {"tool": "noop"}}], '
                                        '"budget": {"cost": 1e400}}', "budget.cost: got inf, expected a finite number"),
    "spec-huge-budget-tokens": submit(spec(budget={"tokens": 99999999999999999999}),
                                      "budget.tokens: got 99999999999999999999, expected an integer <= "),
    "spec-huge-cost-hint": submit(spec(noop("a", execution={"cost_hint": {"usd": 1e20}})),
                                  "steps[0].execution.cost_hint.usd: got 1e+20, expected a number <="),
    "app-budgets-bad-on-submit": Case(("submit", "{spec}", *DD), "FLEETFORGE_APP_BUDGETS: got 'x'", spec=spec(),
                                      env={"FLEETFORGE_APP_BUDGETS": "x"}),
    "lease-not-a-number": worker_env("FLEETFORGE_LEASE_MS", "abc", "FLEETFORGE_LEASE_MS: got 'abc', expected a whole"),
    "lease-negative": worker_env("FLEETFORGE_LEASE_MS", "-5",
                                 "FLEETFORGE_LEASE_MS: got '-5', expected a whole number of milliseconds from 1"),
    "lease-zero": worker_env("FLEETFORGE_LEASE_MS", "0",
                             "FLEETFORGE_LEASE_MS: got '0', expected a whole number of milliseconds from 1"),
    "inflight-tokens-negative": worker_env("FLEETFORGE_MAX_INFLIGHT_TOKENS", "-3",
                                           "FLEETFORGE_MAX_INFLIGHT_TOKENS: got '-3'"),
    "inflight-cost-not-a-number": worker_env("FLEETFORGE_MAX_INFLIGHT_COST", "abc",
                                             "FLEETFORGE_MAX_INFLIGHT_COST: got 'abc', expected a finite number "
                                             "of USD"),
    "inflight-cost-negative": worker_env("FLEETFORGE_MAX_INFLIGHT_COST", "-1",
                                         "FLEETFORGE_MAX_INFLIGHT_COST: got '-1', expected a finite number"),
}


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_"))}
    base.update(COLUMNS="200", NO_COLOR="1", TERM="dumb", **env)
    return subprocess.run([sys.executable, "-m", "fleetforge", *args], cwd=cwd, env=base, input=stdin,
                          capture_output=True, text=True, timeout=120)


def stored_rows(db: Path) -> list[int]:
    """Rows in runs, steps and outbox."""
    with sqlite3.connect(db) as conn:
        return [int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ("runs", "steps", "outbox")]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_rejected_clearly(case: Case, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    spec_file = tmp_path / "spec.json"
    if isinstance(case.spec, bytes):
        spec_file.write_bytes(case.spec)
    elif case.spec is not None:
        spec_file.write_text(case.spec, encoding="utf-8")
    args = [a.replace(D, str(data_dir)).replace("{spec}", spec_file.name) for a in case.args]
    if D in case.args and "submit" in case.args and case.args[1] == D:  # the data dir as the spec itself
        data_dir.mkdir()
    proc = run_cli(args, cwd=tmp_path, env=case.env, stdin=case.stdin)
    stderr = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == case.code, (proc.returncode, proc.stdout, proc.stderr)
    assert " ".join(case.expect.split()) in stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    for db in (data_dir / "state.db", tmp_path / ".fleetforge" / "state.db"):
        if db.exists():
            assert stored_rows(db) == [0, 0, 0]
    assert "hunter2" not in proc.stderr + proc.stdout


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25
