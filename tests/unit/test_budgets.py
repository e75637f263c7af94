"""Budgets: the arithmetic of core.budgets, and how the scheduler reserves, denies, defers and reconciles
on a real SQLite store (state tables, ledger and outbox events checked together)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetforge.core import budgets as B
from fleetforge.core.config import RuntimeConfig
from fleetforge.domain.models import (
    BudgetLimit,
    BudgetRow,
    CostHint,
    ErrorKind,
    ExecutionSpec,
    PolicySpec,
    StepSpec,
    StepType,
)
from fleetforge.ports.clock import SystemClock
from tests.fakes import Fail, Harness, Ok, ScriptedExecutor, tool

MS = 1_000


def spec(budget: BudgetLimit | None = None, hint: CostHint | None = None) -> StepSpec:
    return StepSpec("s", StepType.LLM, execution=ExecutionSpec(cost_hint=hint), policy=PolicySpec(budget=budget))


def hint(tokens: int, usd: float = 0.0) -> dict[str, object]:
    return {"cost_hint": {"tokens": tokens, "usd": usd}}


# -- arithmetic -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "cost_hint", "expected"), [
    (BudgetLimit(300, 0.003), CostHint(200, 0.002), B.Reservation(300, 3_000, "policy")),
    (BudgetLimit(tokens=300), None, B.Reservation(300, 0, "policy")),
    (BudgetLimit(cost=0.5), CostHint(200), B.Reservation(0, 500_000, "policy")),
    (None, CostHint(200, 0.002), B.Reservation(200, 2_000, "cost_hint")),
    (BudgetLimit(), CostHint(0, 0.0), B.Reservation(0, 0, "cost_hint")),
    (None, None, B.Reservation(50, 500, "estimate")),
], ids=["policy-over-hint", "policy-tokens", "policy-cost", "hint", "empty-policy-hint", "estimate"])
def test_reservation_source_policy_then_hint_then_estimate(budget: BudgetLimit | None, cost_hint: CostHint | None,
                                                           expected: B.Reservation) -> None:
    assert B.reservation_for(spec(budget, cost_hint), (50, 0.0005)) == expected


def test_exceeded_counts_used_and_reserved() -> None:
    row = BudgetRow("run:r", 1_000, 10_000, tokens_reserved=300, tokens_used=500)
    assert B.exceeded(row, 200, 0) is None
    assert B.exceeded(row, 201, 0) == "run:r: 201 more tokens would exceed the limit 1000 (used 500, reserved 300)"
    row.cost_used_micros = 9_000
    assert B.exceeded(row, 0, 1_000) is None
    why = B.exceeded(row, 0, 1_001)
    assert why is not None and why.startswith("run:r: $0.001001 more would exceed the limit $0.010000")
    assert B.exceeded(BudgetRow("fleet", None, None, 10**9, 10**9), 10**9, 10**9) is None


def test_headroom_is_the_tightest_limit() -> None:
    rows = [BudgetRow("run:r", 1_000, None, 100, 200), BudgetRow("app:w/a", 5_000, 2_000_000, 0, 4_500, 0, 1_000),
            BudgetRow("fleet", None, None)]
    room = B.headroom(rows)
    assert (room.tokens_limit, room.tokens_remaining, room.tokens_committed) == (5_000, 500, 4_500)
    assert (room.cost_limit_micros, room.cost_remaining_micros, room.cost_committed_micros) == (
        2_000_000, 1_999_000, 1_000)
    assert room.active
    assert B.headroom([BudgetRow("fleet", None, None)]) == B.Headroom(0, 0, 0, 0, 0, 0, False)


def test_settle_applies_deltas_to_every_scope() -> None:
    rows = [BudgetRow("a", None, None), BudgetRow("b", 10, 10)]
    B.settle(rows, reserve_tokens=5, reserve_micros=7)
    B.settle(rows, reserve_tokens=-5, reserve_micros=-7, use_tokens=3, use_micros=4)
    assert all((r.tokens_reserved, r.cost_reserved_micros, r.tokens_used, r.cost_used_micros) == (0, 0, 3, 4)
               for r in rows)


# -- the scheduler ----------------------------------------------------------------------------------


def money(row: BudgetRow | None) -> tuple[int, int, int, int]:
    assert row is not None
    return row.tokens_reserved, row.tokens_used, row.cost_reserved_micros, row.cost_used_micros


def test_a_step_over_the_run_budget_is_denied_and_spends_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    rid = h.submit(tool("a", policy={"budget": {"tokens": 500}}), tool("b", "a"), budget={"tokens": 100})
    assert h.claim() == []
    assert h.status(rid) == ("failed", {"a": "denied", "b": "skipped"})
    [attempt] = h.store.get_attempts(rid)
    assert (attempt.status, attempt.error_kind, attempt.tokens_reserved, attempt.cost_reserved_micros,
            attempt.tokens_used) == ("denied", "budget_exceeded", 0, 0, 0)
    assert money(h.budget(f"run:{rid}")) == (0, 0, 0, 0) and h.budget(f"run:{rid}").tokens_limit == 100  # type: ignore[union-attr]
    assert money(h.budget("fleet")) == (0, 0, 0, 0)
    assert h.kinds(rid) == ["run_submitted", "step_queued", "step_denied", "step_skipped", "run_failed"]
    [denied] = h.of(rid, "step_denied")
    assert (denied["error_kind"], denied["pack"], denied["attempt"]) == ("budget_exceeded", "", 1)
    assert denied["reason"] == f"run:{rid}: 500 more tokens would exceed the limit 100 (used 0, reserved 0)"
    assert h.of(rid, "run_failed")[0]["error_kind"] == "budget_exceeded"
    assert h.ex.calls == []
    summary = h.summaries_agree()
    assert summary["budget"]["tokens_reserved"] == 0 and summary["steps"]["attempts"] == 1
    h.one_terminal_event_per_attempt()


def test_a_denial_after_usage_leaves_the_budget_as_it_was(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    rid = h.submit(tool("a", execution=hint(600, 0.004)), tool("b", "a", execution=hint(400, 0.001)),
                   budget={"tokens": 1_000, "cost": 0.01})
    [a] = h.claim()
    assert money(h.budget(f"run:{rid}")) == (600, 0, 4_000, 0)
    h.finish(a, Ok(input_tokens=500, output_tokens=200, cost_usd=0.003))
    before = money(h.budget(f"run:{rid}"))
    assert before == (0, 700, 0, 3_000)
    assert h.claim() == []  # 700 used + 400 > 1000
    assert money(h.budget(f"run:{rid}")) == before
    assert h.status(rid) == ("failed", {"a": "succeeded", "b": "denied"})
    assert h.of(rid, "step_denied")[0]["reason"].startswith(f"run:{rid}: 400 more tokens")
    h.summaries_agree()
    h.one_terminal_event_per_attempt()


def test_a_cost_limit_denies_too(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    rid = h.submit(tool("a", execution=hint(0, 0.02)), budget={"cost": 0.01})
    assert h.claim() == []
    assert h.status(rid) == ("failed", {"a": "denied"})
    assert "$0.020000 more would exceed the limit $0.010000" in h.of(rid, "step_denied")[0]["reason"]


def test_nothing_else_of_a_run_starts_in_the_batch_that_denied_it(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    first = {"budget": {"tokens": 500}, "slo": {"priority_boost": 1_000}}
    rid = h.submit(tool("a", policy=first), tool("c"), budget={"tokens": 100})
    assert h.claim() == []  # a is denied; c, in the same batch, must not start
    assert h.status(rid) == ("failed", {"a": "denied", "c": "skipped"})
    assert "step_started" not in h.kinds(rid)
    assert h.kinds(rid).count("run_failed") == 1
    h.summaries_agree()
    h.one_terminal_event_per_attempt()


def test_app_budgets_span_runs(tmp_path: Path) -> None:
    config = RuntimeConfig(app_budgets={"acme/bot": BudgetLimit(tokens=1_000)})
    h = Harness(tmp_path / "s.db", config=config)
    r1 = h.submit(tool("a", execution=hint(800)), workspace="acme", app="bot")
    [a] = h.claim()
    [reserved] = h.of(r1, "budget_reserved")
    assert (reserved["tokens_limit"], reserved["tokens_remaining"], reserved["budget_active"]) == (1_000, 200, True)
    assert reserved["tokens_projected_burn"] == 800
    h.finish(a, Ok(output_tokens=800))
    r2 = h.submit(tool("a", execution=hint(300)), workspace="acme", app="bot")
    r3 = h.submit(tool("a", execution=hint(300)), workspace="acme", app="other")
    [claim] = h.claim()
    assert claim.run.id == r3  # other apps are not limited
    h.finish(claim)
    assert h.status(r2) == ("failed", {"a": "denied"})
    assert h.of(r2, "step_denied")[0]["reason"] == (
        "app:acme/bot: 300 more tokens would exceed the limit 1000 (used 800, reserved 0)")
    row = h.budget("app:acme/bot")
    assert row is not None and (row.tokens_limit, row.tokens_used, row.tokens_reserved) == (1_000, 800, 0)
    assert h.status(r1)[0] == h.status(r3)[0] == "succeeded"
    h.summaries_agree()


def test_in_flight_caps_defer_instead_of_over_committing(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db", config=RuntimeConfig(max_inflight_tokens=1_000, defer_delay_ms=250))
    rid = h.submit(tool("a", execution=hint(600)), tool("b", execution=hint(600)))
    [a] = h.claim()
    assert a.step.step_id == "a"
    [deferred] = h.of(rid, "step_deferred")
    assert (deferred["step_id"], deferred["delay_ms"], deferred["attempt"]) == ("b", 250.0, 0)
    assert deferred["reason"].startswith("in-flight cap: fleet: 600 more tokens would exceed the limit 1000")
    row = h.step(rid, "b")
    assert (row.status, row.not_before_us, row.attempt) == ("queued", h.now() + 250 * MS, 0)
    assert money(h.budget("fleet"))[0] == 600
    h.finish(a, Ok(output_tokens=10))
    h.advance(ms=249)
    assert h.claim() == []
    h.advance(ms=1)
    [b] = h.claim()
    h.finish(b)
    assert h.status(rid) == ("succeeded", {"a": "succeeded", "b": "succeeded"})
    assert h.kinds(rid, "b") == ["step_queued", "step_deferred", "budget_reserved", "step_started",
                                 "budget_reconciled", "tool_call", "step_succeeded"]
    assert money(h.budget("fleet")) == (0, 10, 0, 0)
    h.summaries_agree()
    h.one_terminal_event_per_attempt()


def test_a_step_larger_than_the_cap_runs_alone(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db", config=RuntimeConfig(max_inflight_cost=0.01))
    rid = h.submit(tool("a", execution=hint(0, 0.05)))
    [a] = h.claim()  # nothing in flight: deferring would never end
    h.finish(a)
    assert h.status(rid) == ("succeeded", {"a": "succeeded"})
    assert "step_deferred" not in h.kinds(rid)


def test_back_pressure_with_a_worker_finishes_everything(tmp_path: Path) -> None:
    config = RuntimeConfig(max_inflight_tokens=1_000, defer_delay_ms=5)
    h = Harness(tmp_path / "s.db", config=config, clock=SystemClock())
    rid = h.submit(*(tool(f"s{i}", execution=hint(600)) for i in range(4)))
    h.drain()
    assert h.status(rid) == ("succeeded", {f"s{i}": "succeeded" for i in range(4)})
    assert len(h.of(rid, "step_deferred")) >= 3
    assert money(h.budget("fleet"))[0] == 0
    h.summaries_agree()
    h.one_terminal_event_per_attempt()


def test_reservation_sources_reach_the_ledger_and_events(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db", executor=ScriptedExecutor(estimate=(50, 0.0005)))
    rid = h.submit(tool("p", execution=hint(200, 0.002), policy={"budget": {"tokens": 300, "cost": 0.003}}),
                   tool("c", execution=hint(200, 0.002)), tool("e"))
    claims = h.claim()
    assert {c.step.step_id: (c.reservation.tokens, c.reservation.source) for c in claims} == {
        "p": (300, "policy"), "c": (200, "cost_hint"), "e": (50, "estimate")}
    got = {r["step_id"]: (r["source"], r["tokens"], r["cost_usd"]) for r in h.of(rid, "budget_reserved")}
    assert got == {"p": ("policy", 300, 0.003), "c": ("cost_hint", 200, 0.002), "e": ("estimate", 50, 0.0005)}
    ledger = {a.step_id: (a.tokens_reserved, a.cost_reserved_micros) for a in h.store.get_attempts(rid)}
    assert ledger == {"p": (300, 3_000), "c": (200, 2_000), "e": (50, 500)}
    for c in claims:
        h.finish(c)
    h.summaries_agree()


def test_reservations_reconcile_to_actual_usage(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    rid = h.submit(tool("a", execution={**hint(500, 0.01), "retry_backoff_ms": 0}),
                   budget={"tokens": 10_000, "cost": 1.0})
    [a] = h.claim()
    [reserved] = h.of(rid, "budget_reserved")
    assert (reserved["tokens"], reserved["cost_usd"], reserved["tokens_remaining"],
            reserved["cost_remaining_usd"]) == (500, 0.01, 9_500, 0.99)
    h.finish(a, Fail(ErrorKind.HTTP_5XX, input_tokens=20, cost_usd=0.0001))  # a failure still costs
    [a2] = h.claim()
    h.finish(a2, Ok(input_tokens=100, output_tokens=50, cost_usd=0.002))
    rec = h.of(rid, "budget_reconciled")
    assert [(r["attempt"], r["tokens_reserved"], r["tokens_used"], r["cost_reserved_usd"], r["cost_used_usd"])
            for r in rec] == [(1, 500, 20, 0.01, 0.0001), (2, 500, 150, 0.01, 0.002)]
    assert rec[-1]["tokens_remaining"] == 10_000 - 170 and rec[-1]["tokens_limit"] == 10_000
    ledger = [(x.attempt, x.tokens_reserved, x.tokens_used, x.cost_reserved_micros, x.cost_used_micros,
               x.input_tokens, x.output_tokens) for x in h.store.get_attempts(rid)]
    assert ledger == [(1, 500, 20, 10_000, 100, 20, 0), (2, 500, 150, 10_000, 2_000, 100, 50)]
    assert money(h.budget(f"run:{rid}")) == (0, 170, 0, 2_100)
    assert money(h.budget("app:default/default")) == (0, 170, 0, 2_100)
    summary = h.summaries_agree()
    assert (summary["budget"]["tokens_reserved"], summary["budget"]["tokens_used"]) == (1_000, 170)
    assert summary["budget"]["cost_used"] == 0.0021


def test_budget_caps_pack_warns_then_denies(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.db")
    caps = [{"name": "budget_caps", "max_tokens": 1_000, "warn_ratio": 0.5}]
    rid = h.submit(tool("a", execution=hint(600)), tool("b", "a", execution=hint(600)), packs=caps)
    [a] = h.claim()
    h.finish(a, Ok(output_tokens=600))
    assert h.claim() == []
    decisions = h.of(rid, "policy_decision")
    assert [(d["step_id"], d["effect"], d["reason"][:5]) for d in decisions] == [
        ("a", "allow", "warn:"), ("b", "deny", "over ")]
    assert h.status(rid) == ("failed", {"a": "succeeded", "b": "denied"})
    assert h.of(rid, "step_denied")[0]["pack"] == "budget_caps"
    assert money(h.budget("fleet")) == (0, 600, 0, 0)
    h.summaries_agree()
