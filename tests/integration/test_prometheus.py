"""A real Prometheus (Debian package `prometheus`) scrapes the runtime's OpenTelemetry endpoint, answers the
operator guide's exact expressions, and raises FleetForgeBudgetLow for a run that drained its budget.
`promtool` checks and unit-tests the shipped rules."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fleetforge.adapters.readers.telemetry import Telemetry
from fleetforge.domain.envelope import Envelope
from fleetforge.domain.names import EventKind as K
from tests.support import need
from tests.unit.test_telemetry_metrics import llm, run_workload

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

# The operator guide, section 5, word for word.
GUIDE_RULE = {
    "alert": "FleetForgeBudgetLow",
    "expr": "(fleetforge_budget_tokens_remaining_sum / fleetforge_budget_tokens_remaining_count) < 100",
    "for": "5m",
    "labels": {"severity": "warning"},
    "annotations": {"summary": "Budget low for FleetForge run ({{ $labels.run_id }})",
                    "description": "Remaining tokens dropped below 100 for 5 minutes."},
}
GUIDE_EXPRESSIONS = (
    "(fleetforge_budget_tokens_remaining_sum / fleetforge_budget_tokens_remaining_count) < 100",
    "fleetforge_budget_tokens_projected_burn_sum / fleetforge_budget_tokens_projected_burn_count",
    "histogram_quantile(0.95, fleetforge_queue_lag_seconds_bucket)",
)

# ~250 prompt tokens + ~100 output tokens against a 400-token limit: ~50 remain, and "next" is denied.
DRAIN = {"workspace": "acme", "app": "drain", "seed": 11, "budget": {"tokens": 400},
         "steps": [llm("big", prompt="x" * 1000, output_tokens=100), llm("next", "big", prompt="x" * 1000)]}
ROOMY = {"workspace": "acme", "app": "roomy", "budget": {"tokens": 100_000},
         "steps": [llm("a"), llm("b", "a"), {"id": "t", "type": "tool", "depends_on": ["b"],
                                             "inputs": {"tool": "search", "args": {"query": "fleet"}}}]}
FLAKY = {"workspace": "acme", "app": "flaky", "seed": 3,
         "steps": [llm("f3", fail_rate=0.6, failure_kinds=["http_5xx"])
                   | {"execution": {"max_attempts": 3, "retry_backoff_ms": 1}}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


# -- promtool -------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_config() -> None:
    need(PROMTOOL is not None, "promtool (Debian package prometheus)")
    for args in (("check", "rules", str(DEPLOY / "alerts.yaml")),
                 ("check", "config", str(DEPLOY / "prometheus.yml"))):
        done = _promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    need(PROMTOOL is not None, "promtool (Debian package prometheus)")
    done = _promtool("test", "rules", str(DEPLOY / "alerts_test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    cases = [case for t in yaml.safe_load((DEPLOY / "alerts_test.yaml").read_text())["tests"]
             for case in t["alert_rule_test"]]
    for group in yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            mine = [c for c in cases if c["alertname"] == rule["alert"]]
            assert any(c["exp_alerts"] for c in mine), f"no promtool test of {rule['alert']} firing"
            assert any(not c["exp_alerts"] for c in mine), f"no promtool test of {rule['alert']} quiet"


def test_the_guide_rule_is_shipped_verbatim() -> None:
    groups = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"]
    budget = next(g for g in groups if g["name"] == "fleetforge-budget")
    assert budget["rules"][0] == GUIDE_RULE


# -- a real Prometheus scraping a running workload ------------------------------------------------


class Stack:
    def __init__(self, api: str, events: list[Envelope]) -> None:
        self.api = api
        self.events = events

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.api}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.api}/api/v1/alerts", timeout=10).json()["data"]["alerts"])

    def run_of(self, app: str) -> str:
        return next(e.run_id for e in self.events if e.app == app)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(PROMETHEUS is not None, "prometheus (Debian package prometheus)")
    assert PROMETHEUS is not None
    tmp = tmp_path_factory.mktemp("prometheus")
    telemetry = Telemetry.from_env(env={"OTEL_EXPORTER_PROMETHEUS_PORT": "0"})
    address = telemetry.start_prometheus()
    assert address is not None
    # The shipped rules, with a short `for:` on the guide's rule so the test sees it fire.
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "FleetForgeBudgetLow":
                rule["for"] = "2s"
    (tmp / "alerts.yaml").write_text(yaml.safe_dump(rules))
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"{address[0]}:{address[1]}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{api}/-/ready", timeout=2).status_code == 200, 30, "Prometheus ready",
              tmp / "prometheus.log")
        events: list[Envelope] = []

        def observer(batch: list[Envelope]) -> None:
            events.extend(batch)
            telemetry.observer(batch)

        run_workload(tmp, [DRAIN, ROOMY, FLAKY], observer, concurrency=4)
        yield Stack(api, events)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        telemetry.shutdown()


def _wait(check: Any, timeout_s: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = check()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{tail}")
        time.sleep(0.25)


def test_the_workload_drained_one_budget(stack: Stack) -> None:
    drain = stack.run_of("drain")
    denied = [e for e in stack.events if e.kind is K.STEP_DENIED and e.run_id == drain]
    assert [e.payload["error_kind"] for e in denied] == ["budget_exceeded"]
    remaining = [e.payload["tokens_remaining"] for e in stack.events
                 if e.kind is K.BUDGET_RECONCILED and e.run_id == drain]
    assert len(remaining) == 1 and remaining[0] < 100


def test_the_guide_expressions_answer(stack: Stack) -> None:
    for expr in GUIDE_EXPRESSIONS:
        result = _wait(lambda e=expr: stack.query(e), 30, f"an answer to {expr}")
        assert result, expr
    low = stack.query(GUIDE_EXPRESSIONS[0])
    assert {r["metric"]["run_id"] for r in low} == {stack.run_of("drain")}
    assert float(low[0]["value"][1]) < 100
    burn = stack.query(GUIDE_EXPRESSIONS[1])
    assert {r["metric"]["run_id"] for r in burn} == {stack.run_of("drain"), stack.run_of("roomy")}
    p95 = stack.query(GUIDE_EXPRESSIONS[2])
    assert all(0 <= float(r["value"][1]) <= 600 for r in p95)
    assert {r["metric"]["app"] for r in p95} == {"drain", "roomy", "flaky"}


def test_the_other_series_the_rules_use(stack: Stack) -> None:
    _wait(lambda: stack.query("fleetforge_step_retries_total"), 30, "fleetforge_step_retries_total")
    retries = stack.query("sum(fleetforge_step_retries_total)")
    assert float(retries[0]["value"][1]) == len([e for e in stack.events if e.kind is K.STEP_RETRY_SCHEDULED]) > 0
    assert stack.query("fleetforge_budget_tokens_limit")
    # the queue rule's windowed form needs two scrapes
    _wait(lambda: stack.query("sum by (le) (rate(fleetforge_queue_lag_seconds_bucket[1m]))"), 30, "a rate")


def test_budget_low_alert_goes_pending_then_firing_for_the_drained_run(stack: Stack) -> None:
    drain = stack.run_of("drain")
    states: list[str] = []

    def firing() -> bool:
        for alert in stack.alerts():
            if alert["labels"]["alertname"] == "FleetForgeBudgetLow":
                assert alert["labels"]["run_id"] == drain  # the roomy run never alerts
                assert alert["annotations"]["summary"] == f"Budget low for FleetForge run ({drain})"
                if not states or states[-1] != alert["state"]:
                    states.append(alert["state"])
        return bool(states) and states[-1] == "firing"

    _wait(firing, 45, "FleetForgeBudgetLow to fire")
    assert states[-1] == "firing" and set(states) <= {"pending", "firing"}
