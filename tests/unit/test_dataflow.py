"""Data between steps: run inputs, `${{ }}` references, run outputs (docs/runtime.md, "Data between steps")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetforge.core.policies.registry import default_packs, option_validators
from fleetforge.domain import dataflow as flow
from fleetforge.domain.errors import SpecError
from fleetforge.domain.spec import parse_spec, spec_to_dict
from fleetforge.domain.stored_spec import parse_stored_spec
from tests.fakes import Fail, Harness, Ok, ScriptedExecutor, llm, tool

PACKS = option_validators(default_packs())


def _spec(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"steps": list(steps), **top}


def _t(step_id: str, *deps: str, **inputs: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "tool", "inputs": {"tool": "noop", **inputs}, "depends_on": list(deps)}


PLAN_SEARCH = (_t("plan"), _t("search", "plan", q="${{ steps.plan.output.text }}"))

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-step": (_spec(_t("a", q="${{ steps.nope.output }}")),
                     "steps[0].inputs.q: got '${{ steps.nope.output }}', expected a known step id (ancestors: none)"),
    "not-an-ancestor": (_spec(_t("a"), _t("b", q="${{ steps.a.output.text }}")),
                        "steps[1].inputs.q: got '${{ steps.a.output.text }}', expected a step 'b' depends on, "
                        "directly or transitively (add 'a' to depends_on; ancestors: none)"),
    "sibling-not-ancestor": (_spec(_t("a"), _t("b", "a"), _t("c", "a", q="${{ steps.b.output }}")),
                             "expected a step 'c' depends on, directly or transitively (add 'b' to depends_on"),
    "self-reference": (_spec(_t("a", q="${{ steps.a.output }}")),
                       "steps[0].inputs.q: got '${{ steps.a.output }}', expected a reference to another step "
                       "(a step cannot use its own output)"),
    "unknown-root": (_spec(_t("a", q="${{ env.HOME }}")),
                     "steps[0].inputs.q: got '${{ env.HOME }}', expected ${{ inputs.NAME... }} or "
                     "${{ steps.ID.output... }}: a reference rooted at 'inputs' or 'steps', got root 'env'"),
    "double-dot": (_spec(*PLAN_SEARCH[:1], _t("s", "plan", q="${{ steps.plan.output..text }}")),
                   "steps[1].inputs.q: got '${{ steps.plan.output..text }}', expected ${{ inputs.NAME... }} or "
                   "${{ steps.ID.output... }}: a name after '.' at offset 18"),
    "bad-index": (_spec(_t("plan"), _t("s", "plan", q="${{ steps.plan.output.items[x] }}")),
                  "'.name', '[N]' or '[\"key\"]' at offset 23"),
    "missing-output-segment": (_spec(_t("plan"), _t("s", "plan", q="${{ steps.plan.text }}")),
                               "steps.ID.output followed by an optional path"),
    "empty-reference": (_spec(_t("a", q="${{ }}")), "an expression inside ${{ }}"),
    "unclosed": (_spec(_t("a", q="hello ${{ inputs.x")), "('${{' without its closing '}}')"),
    "unknown-input": (_spec(_t("a", q="${{ inputs.ticket }}"), inputs={"customer": "c1"}),
                      "steps[0].inputs.q: got '${{ inputs.ticket }}', expected a path in the run's inputs "
                      "(inputs has no key 'ticket' (keys: customer))"),
    "input-index-out-of-range": (_spec(_t("a", q="${{ inputs.ids[3] }}"), inputs={"ids": [1, 2]}),
                                 "(inputs.ids has 2 items, so it has no [3])"),
    "inputs-not-an-object": (_spec(_t("a"), inputs=["x"]),
                             "inputs: got ['x'], expected a mapping (a JSON object) of run inputs"),
    "inputs-not-json": (_spec(_t("a"), inputs={"x": float("nan")}), "inputs.x: got nan, expected a finite number"),
    "schema-violation": (_spec(_t("a"), inputs={"ticket": 7},
                               input_schema={"type": "object", "properties": {"ticket": {"type": "string"}}}),
                         "inputs.ticket: got 7, expected a value input_schema accepts (7 is not of type 'string')"),
    "schema-required": (_spec(_t("a"), input_schema={"type": "object", "required": ["ticket"]}),
                        "inputs: got {}, expected a value input_schema accepts ('ticket' is a required property)"),
    "schema-invalid": (_spec(_t("a"), input_schema={"type": "objekt"}),
                       "input_schema.type: got 'objekt', expected a valid JSON Schema"),
    "schema-not-a-mapping": (_spec(_t("a"), input_schema="string"),
                             "input_schema: got 'string', expected a JSON Schema (a mapping)"),
    "oversized-inputs": (_spec(_t("a"), inputs={"blob": "x" * (flow.MAX_RUN_INPUTS_BYTES + 1)}),
                         "bytes of JSON, expected at most 262144 bytes (256 KiB)"),
    "bad-output-reference": (_spec(_t("a"), outputs={"answer": "${{ steps.zz.output.text }}"}),
                             "outputs.answer: got '${{ steps.zz.output.text }}', expected a known step id "
                             "(known: a)"),
    "bad-output-name": (_spec(_t("a"), outputs={"an swer": "${{ steps.a.output }}"}),
                        "outputs.an swer: got 'an swer', expected a string matching [A-Za-z0-9_.-]{1,64}"),
    "outputs-not-a-mapping": (_spec(_t("a"), outputs=["${{ steps.a.output }}"]),
                              "outputs: got ['${{ steps.a.output }}'], expected a mapping of output name"),
    "reference-in-nested-value": (_spec(_t("a", args={"list": [{"k": "${{ steps.b.output }}"}]})),
                                  "steps[0].inputs.args.list[0].k: got '${{ steps.b.output }}', expected a known "
                                  "step id"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_reference_or_input_is_a_clear_spec_error(name: str) -> None:
    data, expected = BAD[name]
    with pytest.raises(SpecError) as caught:
        parse_spec(data, packs=PACKS)
    assert any(expected in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("name", ["unknown-step", "not-an-ancestor", "schema-violation", "bad-output-reference",
                                  "oversized-inputs"])
def test_bad_reference_stores_nothing(tmp_path: Path, name: str) -> None:
    h = Harness(tmp_path / "s.db")
    with pytest.raises(SpecError):
        h.rt.submit(BAD[name][0])
    assert h.store.list_runs() == [] and list(h.store.iter_outbox()) == []


def test_valid_references_round_trip_through_the_stored_form() -> None:
    data = _spec(_t("plan"), _t("b", "plan", q="${{ steps.plan.output.items[0] }}"),
                 _t("c", "b", q='${{ steps.plan.output["odd key"] }} and ${{ inputs.ticket }}'),
                 inputs={"ticket": "T-1"}, input_schema={"type": "object"},
                 outputs={"answer": "${{ steps.c.output.text }}"})
    spec = parse_spec(data, packs=PACKS)  # c reaches plan through b: a transitive ancestor is fine
    assert parse_stored_spec(spec_to_dict(spec), packs=PACKS) == spec
    assert spec.inputs == {"ticket": "T-1"} and spec.outputs == {"answer": "${{ steps.c.output.text }}"}


def test_a_referenced_field_is_type_checked_when_resolved_not_at_submit() -> None:
    data = _spec(_t("plan"), {"id": "fetch", "type": "http", "depends_on": ["plan"],
                               "inputs": {"url": "${{ steps.plan.output.url }}"}})
    parse_spec(data, packs=PACKS)  # the url is not known before plan runs


def test_whole_value_keeps_its_json_type_and_interpolation_renders_text() -> None:
    out = {"n": 3, "ok": True, "none": None, "list": [1, "a"], "obj": {"k": 1.5}, "s": "text"}

    def get(ref: flow.Ref) -> Any:
        return flow.lookup(out, ref.path, "steps.p.output")

    resolved = flow.resolve({
        "n": "${{ steps.p.output.n }}", "ok": "${{ steps.p.output.ok }}", "none": "${{ steps.p.output.none }}",
        "list": "${{ steps.p.output.list }}", "first": "${{ steps.p.output.list[1] }}",
        "obj": "${{steps.p.output.obj}}", "text": "n=${{ steps.p.output.n }} ok=${{ steps.p.output.ok }}",
        "json": "obj: ${{ steps.p.output.obj }}; list: ${{ steps.p.output.list }}; s: ${{ steps.p.output.s }}",
        "nested": [{"deep": "${{ steps.p.output.n }}"}], "plain": 7,
    }, get)
    assert resolved == {
        "n": 3, "ok": True, "none": None, "list": [1, "a"], "first": "a", "obj": {"k": 1.5},
        "text": "n=3 ok=true", "json": 'obj: {"k":1.5}; list: [1,"a"]; s: text',
        "nested": [{"deep": 3}], "plain": 7,
    }


def test_plan_output_email_reaches_the_next_model_redacted(tmp_path: Path) -> None:
    ex = ScriptedExecutor({"plan": [Ok({"text": "write to alice@example.com about the refund", "n": 2})]})
    h = Harness(tmp_path / "s.db", executor=ex)
    redact = {"packs": ["pii_redaction"]}
    rid = h.submit(llm("plan", "Plan for ${{ inputs.ticket }}"),
                   {**llm("answer", "Use this plan: ${{ steps.plan.output.text }}", "plan", policy=redact),
                    "inputs": {"model": "fake-model", "prompt": "Use this plan: ${{ steps.plan.output.text }}",
                               "count": "${{ steps.plan.output.n }}"}},
                   inputs={"ticket": "T-42"}, outputs={"plan": "${{ steps.plan.output.text }}",
                                                      "count": "${{ steps.plan.output.n }}"})
    h.drain()
    assert h.status(rid) == ("succeeded", {"plan": "succeeded", "answer": "succeeded"})
    assert ex.started("plan")[0].inputs["prompt"] == "Plan for T-42"
    got = ex.started("answer")[0].inputs
    assert got["prompt"] == "Use this plan: write to [REDACTED:email] about the refund"  # what the model saw
    assert got["count"] == 2  # a whole-value reference keeps its type
    stored = h.step(rid, "answer").spec["inputs"]
    assert stored == got and "alice@example.com" not in str(h.step(rid, "answer"))
    started = h.of(rid, "step_started", "answer")
    assert started[0]["inputs"] == got
    decisions = h.of(rid, "policy_decision", "answer")
    assert any(d["hook"] == "pre" and d["effect"] == "modify" for d in decisions)
    run = h.store.get_run(rid)
    # a run with a redacting step keeps its outputs redacted, as its labels and run inputs
    assert run is not None and run.outputs == {"plan": "write to [REDACTED:email] about the refund", "count": 2}
    assert h.of(rid, "run_succeeded")[0]["outputs"] == run.outputs
    h.summaries_agree()


def test_run_outputs_of_a_redacting_run_are_redacted(tmp_path: Path) -> None:
    ex = ScriptedExecutor({"plan": [Ok({"text": "mail bob@example.org"})]})
    h = Harness(tmp_path / "s.db", executor=ex)
    rid = h.submit(tool("plan"), packs=["pii_redaction"], outputs={"t": "${{ steps.plan.output.text }}"})
    h.drain()
    run = h.store.get_run(rid)
    assert run is not None and run.outputs == {"t": "mail [REDACTED:email]"}


def test_missing_path_at_claim_fails_the_step_with_validation_and_no_retry(tmp_path: Path) -> None:
    ex = ScriptedExecutor({"plan": [Ok({"text": "hi"})]})
    h = Harness(tmp_path / "s.db", executor=ex)
    rid = h.submit(tool("plan"), tool("next", "plan", q="${{ steps.plan.output.items[0] }}"))
    h.drain()
    assert h.status(rid) == ("failed", {"plan": "succeeded", "next": "failed"})
    assert ex.started("next") == []  # never executed
    failed = h.of(rid, "step_failed", "next")
    assert len(failed) == 1 and failed[0]["error_kind"] == "validation" and failed[0]["final"]
    assert failed[0]["error"] == ("inputs of step 'next': steps.plan.output has no key 'items' (keys: text)")
    h.summaries_agree()
    h.one_terminal_event_per_attempt()


def test_resolved_inputs_are_checked_by_the_step_type(tmp_path: Path) -> None:
    ex = ScriptedExecutor({"plan": [Ok({"url": "ftp://nope"})]})
    h = Harness(tmp_path / "s.db", executor=ex)
    rid = h.submit(tool("plan"), {"id": "fetch", "type": "http", "depends_on": ["plan"],
                                  "inputs": {"url": "${{ steps.plan.output.url }}"}})
    h.drain()
    failed = h.of(rid, "step_failed", "fetch")
    assert failed[0]["error_kind"] == "validation"
    assert "inputs.url: got 'ftp://nope', expected an http:// or https:// URL" in failed[0]["error"]


def test_oversized_resolved_inputs_fail_at_claim(tmp_path: Path) -> None:
    big = "x" * (flow.MAX_RESOLVED_BYTES // 2 + 10)
    ex = ScriptedExecutor({"plan": [Ok({"t": big})]})
    h = Harness(tmp_path / "s.db", executor=ex)
    rid = h.submit(tool("plan"), tool("next", "plan", a="${{ steps.plan.output.t }}", b="${{ steps.plan.output.t }}"))
    h.drain()
    failed = h.of(rid, "step_failed", "next")
    assert failed[0]["error_kind"] == "validation" and "expected at most 1048576 (1 MiB)" in failed[0]["error"]


def test_a_retried_step_resolves_again(tmp_path: Path) -> None:
    from fleetforge.domain.models import ErrorKind

    ex = ScriptedExecutor({"plan": [Ok({"v": [5]})], "next": [Fail(ErrorKind.TIMEOUT)]})
    h = Harness(tmp_path / "s.db", executor=ex)
    rid = h.submit(tool("plan"), tool("next", "plan", execution={"retry_backoff_ms": 0},
                                      v="${{ steps.plan.output.v[0] }}"))
    h.drain()
    assert h.status(rid)[0] == "succeeded"
    assert [c.inputs["v"] for c in ex.started("next")] == [5, 5]
