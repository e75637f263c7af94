"""Runs whose packs redact PII keep nothing in clear: labels and step inputs are redacted at submit,
outputs, failure messages and policy decision details before they are recorded."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fleetforge.core.policies.pii import (
    KINDS,
    redact_json,
    redact_spec,
    redaction_kinds,
    step_redaction_kinds,
)
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.runtime import Runtime
from fleetforge.domain.models import ErrorKind, PackSpec, StepType
from fleetforge.domain.spec import parse_spec
from fleetforge.ports.executor import Executor
from fleetforge.ports.policy import Effect, Hook, PolicyContext, Verdict
from tests.fakes import Fail, Harness, Ok, ScriptedExecutor, llm, tool

EMAIL, CARD, SSN = "alice.smith@example.com", "4111 1111 1111 1111", "123-45-6789"
NEEDLES = (EMAIL, CARD, CARD.replace(" ", ""), SSN)
LABEL = f"contact {EMAIL} card {CARD}"
PROMPT = f"Write to {EMAIL}, card {CARD}, SSN {SSN}."
REDACTED_PROMPT = "Write to [REDACTED:email], card [REDACTED:credit_card], SSN [REDACTED:ssn]."
PII = [{"name": "pii_redaction", "mode": "redact"}]


def everything(db: Path) -> str:
    """Every row of every table of the SQLite file, as text."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


def assert_clean(text: str) -> None:
    for needle in NEEDLES:
        assert needle not in text, needle


def validators() -> dict[str, Any]:
    return {name: pack.validate_options for name, pack in default_packs().items()}


# -- the redactor ---------------------------------------------------------------------------------------


def test_redact_json_redacts_every_string_recursively_and_keeps_keys() -> None:
    value = {"a": [EMAIL, {"b": (SSN, 3)}], EMAIL: None, "n": 4111, "t": True}
    redacted, found = redact_json(value)
    assert redacted == {"a": ["[REDACTED:email]", {"b": ("[REDACTED:ssn]", 3)}], EMAIL: None, "n": 4111, "t": True}
    assert sorted(found) == ["email", "ssn"]
    assert redact_json(value, frozenset({"ssn"}))[0]["a"][0] == EMAIL


def test_redaction_kinds_only_for_redact_mode_and_the_union_of_packs() -> None:
    assert redaction_kinds([PackSpec("pii_redaction")]) == frozenset(KINDS)
    assert redaction_kinds([PackSpec("pii_redaction", {"mode": "deny"})]) == frozenset()
    assert redaction_kinds([PackSpec("pii_redaction", {"mode": "allow"})]) == frozenset()
    assert redaction_kinds([PackSpec("tool_acl", {"deny": ["x"]})]) == frozenset()
    assert redaction_kinds([PackSpec("pii_redaction", {"kinds": ["email"]}),
                            PackSpec("pii_redaction", {"kinds": ["ssn"]})]) == {"email", "ssn"}


def test_redact_spec_redacts_labels_and_the_inputs_of_redacting_steps_only() -> None:
    spec = parse_spec({
        "labels": {"who": LABEL, EMAIL: "key"},
        "steps": [llm("guarded", PROMPT, policy={"packs": [{"name": "pii_redaction", "kinds": ["email", "ssn"]}]}),
                  llm("open", PROMPT)],
    }, packs=validators())
    out = redact_spec(spec)
    guarded, open_ = out.steps
    # the step's own pack redacts its kinds only; a step without a redacting pack keeps its inputs
    assert guarded.inputs["prompt"] == f"Write to [REDACTED:email], card {CARD}, SSN [REDACTED:ssn]."
    assert open_.inputs["prompt"] == PROMPT and open_ is spec.steps[1]
    # labels: the kinds of every redacting pack of the run, names and values
    assert out.labels == {"who": f"contact [REDACTED:email] card {CARD}", "[REDACTED:email]": "key"}
    assert step_redaction_kinds(out, guarded) == {"email", "ssn"} and not step_redaction_kinds(out, open_)


def test_redact_spec_with_run_packs_covers_every_step_and_leaves_other_specs_alone() -> None:
    data = {"labels": {"who": LABEL}, "packs": PII, "steps": [llm("a", PROMPT), tool("b", "a", args={"to": EMAIL})]}
    out = redact_spec(parse_spec(data, packs=validators()))
    assert out.labels == {"who": "contact [REDACTED:email] card [REDACTED:credit_card]"}
    assert out.steps[0].inputs["prompt"] == REDACTED_PROMPT
    assert out.steps[1].inputs["args"] == {"to": "[REDACTED:email]"}
    plain = parse_spec({**data, "packs": [{"name": "pii_redaction", "mode": "deny"}]}, packs=validators())
    assert redact_spec(plain) is plain


# -- at submit and while running ------------------------------------------------------------------------


def test_submit_stores_and_emits_only_redacted_labels_and_inputs(tmp_path: Path) -> None:
    h = Harness(tmp_path / "state.db")
    rid = h.submit(llm("a", PROMPT), labels={"workflow": LABEL}, packs=PII)
    run = h.store.get_run(rid)
    assert run is not None
    assert run.labels == {"workflow": "contact [REDACTED:email] card [REDACTED:credit_card]"}
    assert run.spec["labels"] == run.labels and run.spec["steps"][0]["inputs"]["prompt"] == REDACTED_PROMPT
    assert h.of(rid, "run_submitted")[0]["labels"] == run.labels
    assert_clean(everything(tmp_path / "state.db"))
    h.drain()
    [call] = h.ex.calls
    assert call.inputs["prompt"] == REDACTED_PROMPT
    # the pre decision still says what was redacted from the inputs the executor received
    [pre, post] = h.of(rid, "policy_decision")
    assert (pre["hook"], pre["effect"]) == ("pre", "modify")
    assert pre["reason"] == "pii redacted: email=1, credit_card=1, ssn=1"
    assert pre["raw"] == {"found": {"email": 1, "credit_card": 1, "ssn": 1}}
    assert (post["hook"], post["effect"]) == ("post", "allow")
    assert h.status(rid) == ("succeeded", {"a": "succeeded"})
    assert_clean(everything(tmp_path / "state.db"))
    h.summaries_agree()


def test_outputs_are_redacted_before_they_are_stored(tmp_path: Path) -> None:
    out = Ok({"text": f"Reply sent to {EMAIL}", "billing": {"card": CARD, "ssn": SSN}})
    h = Harness(tmp_path / "state.db", executor=ScriptedExecutor({"a": [out]}))
    rid = h.submit(tool("a"), packs=PII)
    h.drain()
    assert h.step(rid, "a").output == {"text": "Reply sent to [REDACTED:email]",
                                       "billing": {"card": "[REDACTED:credit_card]", "ssn": "[REDACTED:ssn]"}}
    [pre, post] = h.of(rid, "policy_decision")
    assert (pre["effect"], post["effect"], post["reason"]) == (
        "allow", "modify", "pii redacted: email=1, credit_card=1, ssn=1")
    assert_clean(everything(tmp_path / "state.db"))


def test_failure_messages_are_redacted_even_where_the_cut_would_fall(tmp_path: Path) -> None:
    long = "x" * 490 + f" {CARD} then {EMAIL}"  # the card straddles character 500
    script = ScriptedExecutor({"a": [Fail(ErrorKind.HTTP_5XX, f"upstream rejected {EMAIL} / {SSN}"),
                                     Fail(ErrorKind.VALIDATION, long)]})
    h = Harness(tmp_path / "state.db", executor=script)
    rid = h.submit(tool("a", execution={"max_attempts": 2, "retry_backoff_ms": 0}), packs=PII)
    h.drain()
    first, second = h.of(rid, "step_failed")
    assert first["error"] == "upstream rejected [REDACTED:email] / [REDACTED:ssn]"
    assert second["error"] == "x" * 490 + " [REDACTED"  # cut after redaction: no digit of the card kept
    assert_clean(everything(tmp_path / "state.db"))


def test_a_run_without_redacting_packs_keeps_what_it_was_given(tmp_path: Path) -> None:
    h = Harness(tmp_path / "state.db", executor=ScriptedExecutor({"a": [Fail(ErrorKind.VALIDATION, EMAIL)]}))
    rid = h.submit(tool("a", args={"to": EMAIL}), labels={"who": EMAIL})
    h.drain()
    run = h.store.get_run(rid)
    assert run is not None and run.labels == {"who": EMAIL}
    assert h.of(rid, "step_failed")[0]["error"] == EMAIL


class _Echo:
    """A post-hook pack that repeats the output in its reason and raw details."""

    name = "echo"
    hooks = frozenset({Hook.POST})

    def __init__(self, effect: Effect) -> None:
        self.effect = effect

    def validate_options(self, options: dict[str, Any]) -> list[str]:
        return []

    def evaluate(self, ctx: PolicyContext) -> Verdict:
        return Verdict(self.effect, f"saw {ctx.payload}", {"seen": dict(ctx.payload)})


@pytest.mark.parametrize("deny", [False, True])
def test_decision_reasons_and_details_are_redacted(tmp_path: Path, deny: bool) -> None:
    """A pack evaluated before pii_redaction sees the clear output; what it says is recorded redacted
    (and a denial's reason is also the step_failed error)."""
    h = Harness(tmp_path / "state.db", executor=ScriptedExecutor({"a": [Ok({"to": EMAIL, "ssn": SSN})]}))
    packs = {**default_packs(), "echo": _Echo(Effect.DENY if deny else Effect.ALLOW)}
    executors: dict[StepType, Executor] = {t: h.ex for t in StepType}
    h.rt = Runtime(h.store, executors=executors, packs=packs, clock=h.clock)
    h.scheduler = h.rt.scheduler
    rid = h.submit(tool("a"), packs=["echo", *PII])
    h.drain()
    echo = next(d for d in h.of(rid, "policy_decision") if d["pack"] == "echo")
    assert "[REDACTED:email]" in echo["reason"] and "[REDACTED:ssn]" in echo["reason"]
    assert echo["raw"] == {"seen": {"to": "[REDACTED:email]", "ssn": "[REDACTED:ssn]"}}
    if deny:
        assert "[REDACTED:email]" in h.of(rid, "step_failed")[0]["error"]
    rows = [d.reason for d in h.store.get_decisions(rid)]
    assert any("[REDACTED:email]" in r for r in rows)
    assert_clean(everything(tmp_path / "state.db"))
