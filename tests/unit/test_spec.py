"""Run spec loading, validation and the canonical round trip."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from fleetforge.domain.errors import SpecError
from fleetforge.domain.models import BudgetLimit, CostHint, PackSpec, SloSpec, StepType
from fleetforge.domain.spec import (
    _MEMO_MAX,
    MAX_SPEC_BYTES,
    decode_spec_bytes,
    load_spec_text,
    parse_spec,
    spec_to_dict,
)


def _pii(options: dict[str, Any]) -> list[str]:
    mode = options.get("mode", "redact")
    return [] if mode in {"redact", "deny", "allow"} else [f"mode: got {mode!r}, expected redact|deny|allow"]


PACKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "pii_redaction": _pii,
    "tool_acl": lambda o: [],
    "prompt_injection": lambda o: [],
    "budget_caps": lambda o: [],
}

YAML_SPEC = """
workspace: acme
app: support-bot
labels: {team: core}
seed: 7
budget: {tokens: 10000, cost: 1.5}
packs: [pii_redaction, {name: tool_acl, deny: [shell]}]
steps:
  - id: plan
    type: llm
    inputs: {prompt: "Plan the answer", model: small}
    execution: {max_attempts: 3, retry_backoff_ms: 200, retry_backoff_factor: 2.0, deadline_ms: 30000,
                cost_hint: {tokens: 500, usd: 0.01}}
    policy:
      budget: {tokens: 2000, cost: 0.05}
      slo: {tier: gold, queue_target_ms: 1000, priority_boost: 0}
      packs: [prompt_injection, {name: pii_redaction, mode: redact}]
  - id: lookup
    type: tool
    depends_on: plan
    inputs: {tool: search, args: {q: refunds}}
  - id: notify
    type: http
    depends_on: [plan, lookup]
    inputs: {url: "https://hooks.example.com/x", method: POST, body: {ok: true}}
"""


def _valid() -> dict[str, Any]:
    """A small valid spec as plain data."""
    return {
        "steps": [
            {"id": "a", "type": "llm", "inputs": {"prompt": "hi"}},
            {"id": "b", "type": "tool", "inputs": {"tool": "search"}, "depends_on": ["a"]},
            {"id": "c", "type": "http", "inputs": {"url": "https://example.com"}, "depends_on": ["b"]},
        ]
    }


def _problems(data: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, packs=PACKS)
    return str(info.value)


# -- valid specs ---------------------------------------------------------------------------------


def test_yaml_spec_parses_and_round_trips() -> None:
    spec = parse_spec(load_spec_text(YAML_SPEC, source="run.yaml"), packs=PACKS)

    assert (spec.workspace, spec.app, spec.seed, spec.labels) == ("acme", "support-bot", 7, {"team": "core"})
    assert spec.budget == BudgetLimit(tokens=10000, cost=1.5)
    assert spec.packs == (PackSpec("pii_redaction"), PackSpec("tool_acl", {"deny": ["shell"]}))
    plan, lookup, notify = spec.steps
    assert plan.type is StepType.LLM and plan.inputs == {"prompt": "Plan the answer", "model": "small"}
    assert plan.execution.cost_hint == CostHint(tokens=500, usd=0.01)
    assert plan.policy.slo == SloSpec(tier="gold", queue_target_ms=1000, priority_boost=0)
    assert plan.policy.budget == BudgetLimit(tokens=2000, cost=0.05)
    assert [p.name for p in plan.policy.packs] == ["prompt_injection", "pii_redaction"]
    assert lookup.depends_on == ("plan",)
    assert notify.depends_on == ("plan", "lookup") and notify.type is StepType.HTTP

    canonical = spec_to_dict(spec)
    text = json.dumps(canonical)
    assert parse_spec(json.loads(text), packs=PACKS) == spec
    assert spec_to_dict(parse_spec(load_spec_text(text), packs=PACKS)) == canonical


def test_json_spec_parses_with_defaults_and_round_trips() -> None:
    text = json.dumps(_valid())
    spec = parse_spec(load_spec_text(text, source="run.json"), packs=PACKS)

    assert (spec.workspace, spec.app, spec.seed) == ("default", "default", 0)
    assert (spec.budget, spec.packs, spec.labels) == (None, (), {})
    step = spec.steps[0]
    assert step.execution.max_attempts == 3 and step.execution.retry_backoff_factor == 2.0
    assert step.policy.slo == SloSpec(tier="standard", queue_target_ms=5000, priority_boost=0)

    canonical = spec_to_dict(spec)
    slo = canonical["steps"][0]["policy"]["slo"]
    assert slo == {"tier": "standard", "queue_target_ms": 5000, "priority_boost": 0}
    assert parse_spec(json.loads(json.dumps(canonical)), packs=PACKS) == spec


def test_parse_spec_does_not_alias_or_mutate_its_input() -> None:
    data = _valid()
    data["steps"][0]["inputs"]["extra"] = {"nested": [1, 2]}
    before = copy.deepcopy(data)
    spec = parse_spec(data, packs=PACKS)
    spec.steps[0].inputs["extra"]["nested"].append(3)
    assert data == before


def test_llm_messages_and_numeric_boundaries_are_accepted() -> None:
    data = _valid()
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    data["steps"][0]["inputs"] = {"messages": messages}
    data["steps"][0]["execution"] = {
        "max_attempts": 100,
        "retry_backoff_ms": 0,
        "retry_backoff_factor": 10,
        "deadline_ms": 86_400_000,
    }
    data["steps"][0]["policy"] = {"slo": {"priority_boost": -86_400_000}, "budget": {"tokens": 0}}
    spec = parse_spec(data, packs=PACKS)
    assert spec.steps[0].execution.retry_backoff_factor == 10.0
    assert isinstance(spec.steps[0].execution.retry_backoff_factor, float)
    assert spec.steps[0].policy.budget == BudgetLimit(tokens=0)


# -- malformed specs -----------------------------------------------------------------------------


def _step(**overrides: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"id": "a", "type": "llm", "inputs": {"prompt": "hi"}}
    step.update(overrides)
    return step


def _run(*steps: Any, **top: Any) -> dict[str, Any]:
    return {"steps": list(steps) or [_step()], **top}


BAD_SPECS = [
    pytest.param(["steps"], "spec: got ['steps'], expected a mapping", id="top-level-not-mapping"),
    pytest.param({"workspace": "acme"}, "steps: missing, expected a non-empty list", id="steps-missing"),
    pytest.param(
        {"steps": []}, "steps: got [], expected a non-empty list of at most 1000 steps", id="steps-empty"
    ),
    pytest.param(
        _run(*[_step(id=f"s{i}") for i in range(1001)]),
        "steps: got 1001 steps, expected at most 1000",
        id="steps-too-many",
    ),
    pytest.param(
        _run(_step(), "oops"),
        "steps[1]: got 'oops', expected a mapping with id, type and inputs",
        id="step-not-mapping",
    ),
    pytest.param(
        _run(worksapce="x"),
        "worksapce: unknown key, expected one of app, breakpoints, budget, input_schema, inputs, labels, outputs, "
        "packs, seed, steps, workspace",
        id="unknown-top-key",
    ),
    pytest.param(
        _run(_step(dependson=["x"])),
        "steps[0].dependson: unknown key, expected one of approval, depends_on, execution, id",
        id="unknown-step-key",
    ),
    pytest.param(
        _run(_step(execution={"max_attempt": 2})),
        "steps[0].execution.max_attempt: unknown key, expected one of compensation, cost_hint, deadline_ms, "
        "max_attempts, retry_backoff_factor, retry_backoff_ms (did you mean 'max_attempts'?)",
        id="unknown-key-typo-hint",
    ),
    pytest.param(
        _run(workspace="acme corp"),
        "workspace: got 'acme corp', expected a string matching [A-Za-z0-9_.-]{1,64}",
        id="workspace-pattern",
    ),
    pytest.param(_run(app="x" * 65), "app: got 'xxxxxxxx", id="app-too-long"),
    pytest.param(_run(labels={"team": 3}), "labels.team: got 3, expected a string", id="label-value"),
    pytest.param(_run(labels={1: "x"}), "labels: got key 1, expected string keys", id="label-key"),
    pytest.param(_run(seed=-1), "seed: got -1, expected an integer >= 0", id="seed-negative"),
    pytest.param(_run(seed=True), "seed: got True, expected an integer >= 0", id="seed-bool"),
    pytest.param(
        _run(budget={"tokens": -5}), "budget.tokens: got -5, expected an integer >= 0", id="budget-tokens"
    ),
    pytest.param(
        _run(budget={"cost": "1.5"}), "budget.cost: got '1.5', expected a number from 0 to 1000000000000.0",
        id="budget-cost",
    ),
    pytest.param(
        _run({"type": "llm", "inputs": {"prompt": "x"}}),
        "steps[0].id: missing, expected a string matching",
        id="step-id-missing",
    ),
    pytest.param(
        _run(_step(id="a b")),
        "steps[0].id: got 'a b', expected a string matching [A-Za-z0-9_.-]{1,64}",
        id="step-id-pattern",
    ),
    pytest.param(
        _run(_step(), _step()),
        "steps[1].id: got 'a', expected a unique step id (steps[0] has it too)",
        id="step-id-duplicate",
    ),
    pytest.param(
        _run(_step(type="shell")),
        "steps[0].type: got 'shell', expected one of llm, tool, http",
        id="step-type",
    ),
    pytest.param(
        _run(_step(inputs={})), "steps[0].inputs.prompt: missing, expected a string", id="llm-prompt-missing"
    ),
    pytest.param(
        _run(_step(inputs={"prompt": 3})),
        "steps[0].inputs.prompt: got 3, expected a string",
        id="llm-prompt-type",
    ),
    pytest.param(
        _run(_step(inputs={"prompt": "x", "messages": []})),
        "steps[0].inputs: got both prompt and messages, expected exactly one of them",
        id="llm-prompt-and-messages",
    ),
    pytest.param(
        _run(_step(inputs={"messages": [{"content": "x"}]})),
        "steps[0].inputs.messages[0].role: missing, expected a non-empty string",
        id="llm-message-role",
    ),
    pytest.param(
        _run(_step(inputs="hi")), "steps[0].inputs: got 'hi', expected a mapping", id="inputs-not-mapping"
    ),
    pytest.param(
        _run(_step(inputs={"prompt": "x", "t": {1, 2}})),
        "steps[0].inputs.t: got {1, 2}, expected a JSON value",
        id="inputs-not-json",
    ),
    pytest.param(
        _run(_step(type="tool", inputs={})),
        "steps[0].inputs.tool: missing, expected a tool name",
        id="tool-name-missing",
    ),
    pytest.param(
        _run(_step(type="http", inputs={"url": "ftp://x"})),
        "steps[0].inputs.url: got 'ftp://x', expected an http:// or https:// URL",
        id="http-url",
    ),
    pytest.param(
        _run(_step(type="http", inputs={"url": "http://x", "method": "FETCH"})),
        "steps[0].inputs.method: got 'FETCH', expected one of GET, POST, PUT, PATCH, DELETE, HEAD",
        id="http-method",
    ),
    pytest.param(
        _run(_step(), _step(id="b", depends_on="nope")),
        "steps[1].depends_on: got 'nope', expected the id of another step (known: a, b)",
        id="depends-on-unknown",
    ),
    pytest.param(
        _run(_step(depends_on=["a"])),
        "steps[0].depends_on: got 'a', expected the id of another step (a step cannot depend on itself)",
        id="depends-on-self",
    ),
    pytest.param(
        _run(_step(), _step(id="b", depends_on=["a", "a"])),
        "steps[1].depends_on: got 'a' twice, expected each dependency once",
        id="depends-on-duplicate",
    ),
    pytest.param(
        _run(_step(depends_on={"a": 1})),
        "steps[0].depends_on: got {'a': 1}, expected a list of step ids",
        id="depends-on-type",
    ),
    pytest.param(
        _run(_step(), _step(id="b"), _step(id="c", execution={"max_attempts": -1})),
        "steps[2].execution.max_attempts: got -1, expected an integer >= 1",
        id="max-attempts-negative",
    ),
    pytest.param(
        _run(_step(execution={"max_attempts": 101})),
        "steps[0].execution.max_attempts: got 101, expected an integer <= 100",
        id="max-attempts-high",
    ),
    pytest.param(
        _run(_step(execution={"max_attempts": 2.0})),
        "steps[0].execution.max_attempts: got 2.0, expected an integer from 1 to 100",
        id="max-attempts-float",
    ),
    pytest.param(
        _run(_step(execution={"max_attempts": True})),
        "steps[0].execution.max_attempts: got True, expected an integer from 1 to 100",
        id="max-attempts-bool",
    ),
    pytest.param(
        _run(_step(execution={"retry_backoff_ms": 3_600_001})),
        "steps[0].execution.retry_backoff_ms: got 3600001, expected an integer <= 3600000",
        id="retry-backoff-ms",
    ),
    pytest.param(
        _run(_step(execution={"retry_backoff_factor": 0.5})),
        "steps[0].execution.retry_backoff_factor: got 0.5, expected a number >= 1.0",
        id="retry-backoff-factor",
    ),
    pytest.param(
        _run(_step(execution={"retry_backoff_factor": float("nan")})),
        "steps[0].execution.retry_backoff_factor: got nan, expected a finite number",
        id="retry-backoff-factor-nan",
    ),
    pytest.param(
        _run(_step(execution={"deadline_ms": 0})),
        "steps[0].execution.deadline_ms: got 0, expected an integer >= 1",
        id="deadline-zero",
    ),
    pytest.param(
        _run(_step(execution={"cost_hint": {"usd": -1}})),
        "steps[0].execution.cost_hint.usd: got -1, expected a number >= 0",
        id="cost-hint-usd",
    ),
    pytest.param(
        _run(_step(execution={"cost_hint": {"cost": 1}})),
        "steps[0].execution.cost_hint.cost: unknown key, expected one of tokens, usd",
        id="cost-hint-key",
    ),
    pytest.param(
        _run(_step(policy={"slo": {"tier": "Gold!"}})),
        "steps[0].policy.slo.tier: got 'Gold!', expected a string matching [a-z0-9_-]{1,32}",
        id="slo-tier",
    ),
    pytest.param(
        _run(_step(policy={"slo": {"queue_target_ms": 0}})),
        "steps[0].policy.slo.queue_target_ms: got 0, expected an integer >= 1",
        id="slo-queue-target",
    ),
    pytest.param(
        _run(_step(policy={"slo": {"priority_boost": 86_400_001}})),
        "steps[0].policy.slo.priority_boost: got 86400001, expected an integer <= 86400000",
        id="slo-priority-boost",
    ),
    pytest.param(
        _run(_step(policy={"budget": {"cost": -0.01}})),
        "steps[0].policy.budget.cost: got -0.01, expected a number >= 0",
        id="policy-budget-cost",
    ),
    pytest.param(
        _run(packs=["nope"]),
        "packs[0]: got 'nope', expected a known pack (known: budget_caps, pii_redaction, prompt_injection, "
        "tool_acl)",
        id="pack-unknown",
    ),
    pytest.param(
        _run(_step(policy={"packs": [{"mode": "redact"}]})),
        "steps[0].policy.packs[0].name: missing, expected a known pack",
        id="pack-name-missing",
    ),
    pytest.param(
        _run(_step(policy={"packs": [{"name": "pii_redaction", "mode": "shout"}]})),
        "steps[0].policy.packs[0].mode: got 'shout', expected redact|deny|allow",
        id="pack-option",
    ),
    pytest.param(
        _run(packs=["tool_acl", {"name": "tool_acl"}]),
        "packs[1].name: got 'tool_acl', expected each pack at most once per list (also at packs[0])",
        id="pack-duplicate",
    ),
    pytest.param(
        _run(packs="pii_redaction"),
        "packs: got 'pii_redaction', expected a list of pack names",
        id="packs-not-list",
    ),
    pytest.param(
        _run(workspace="w" * 500), "workspace: got '" + "w" * 56 + "..., expected", id="long-value-truncated"
    ),
]


@pytest.mark.parametrize(("data", "expected"), BAD_SPECS)
def test_malformed_spec_is_rejected_with_path_and_expectation(data: Any, expected: str) -> None:
    message = _problems(data)
    assert expected in message, message


def test_all_problems_are_reported_at_once() -> None:
    data = _run(
        _step(execution={"max_attempts": 0}),
        _step(id="b", type="tool", inputs={}, depends_on=["ghost"]),
        workspace="bad name",
        seed=-3,
    )
    with pytest.raises(SpecError) as info:
        parse_spec(data, packs=PACKS)
    problems = info.value.problems
    assert problems == [
        "workspace: got 'bad name', expected a string matching [A-Za-z0-9_.-]{1,64}",
        "seed: got -3, expected an integer >= 0",
        "steps[0].execution.max_attempts: got 0, expected an integer >= 1 (and <= 100)",
        "steps[1].inputs.tool: missing, expected a tool name (a non-empty string)",
        "steps[1].depends_on: got 'ghost', expected the id of another step (known: a, b)",
    ]
    assert str(info.value).count("\n  - ") == len(problems)


def test_each_problem_names_a_path_a_value_and_an_expectation() -> None:
    data = _run(_step(inputs=[], execution={"deadline_ms": "soon"}, policy={"slo": {"tier": 5}}), app=None)
    for problem in _problems(data).splitlines()[1:]:
        assert ": got " in problem and ", expected " in problem, problem


# -- cycles ---------------------------------------------------------------------------------------


def test_two_step_cycle_is_reported() -> None:
    data = _run(_step(depends_on=["b"]), _step(id="b", depends_on="a"))
    assert "steps: cycle a -> b -> a, expected an acyclic graph" in _problems(data)


def test_longer_cycle_is_reported_once_with_its_members_in_order() -> None:
    data = _run(
        _step(id="start"),
        _step(id="x", depends_on=["start", "z"]),
        _step(id="y", depends_on=["x"]),
        _step(id="z", depends_on=["y"]),
        _step(id="tail", depends_on=["z"]),
    )
    message = _problems(data)
    assert "steps: cycle x -> z -> y -> x, expected an acyclic graph" in message
    assert message.count("cycle") == 1


def test_diamond_is_not_a_cycle() -> None:
    data = _run(
        _step(id="a"),
        _step(id="b", depends_on=["a"]),
        _step(id="c", depends_on=["a"]),
        _step(id="d", depends_on=["b", "c"]),
    )
    assert parse_spec(data, packs=PACKS).steps[3].depends_on == ("b", "c")


def test_long_chain_is_checked_without_recursion_limits() -> None:
    steps = [_step(id="s0")] + [_step(id=f"s{i}", depends_on=[f"s{i - 1}"]) for i in range(1, 1000)]
    steps[0]["depends_on"] = ["s999"]
    message = _problems({"steps": steps})
    assert "steps: cycle s0 -> s999 -> s998" in message


# -- text loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "run.yaml: got an empty document, expected a mapping with a 'steps' list"),
        ("# only a comment\n", "run.yaml: got an empty document"),
        ("- a\n- b\n", "run.yaml: got ['a', 'b'] at the top level, expected a mapping"),
        ("steps: [\n  {id: a\n", "run.yaml:3:1: invalid YAML"),
        ('{"steps": [1]}}', "run.yaml:1:15: invalid JSON: Extra data"),
        ("a: 1\nb: 2\na: 3\n", "run.yaml:3:1: got duplicate key 'a', expected each key once"),
        ('{"a": 1,\n "a": 2}', "run.yaml:2:2: got duplicate key 'a', expected each key once"),
        ("a: &x [*x]\n", "run.yaml:1:8: got a YAML alias to a node that contains it, expected data without cycles"),
    ],
    ids=["empty", "comment-only", "list", "yaml-syntax", "json-syntax", "yaml-dup", "json-dup", "recursive"],
)
def test_load_spec_text_errors_name_source_line_and_expectation(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, source="run.yaml")
    assert expected in str(info.value)


def test_oversized_text_is_refused_before_parsing() -> None:
    text = json.dumps(_run(labels={"blob": "x" * MAX_SPEC_BYTES}))
    expected = r"big\.json: got \d+ bytes, expected at most 1048576 bytes \(1 MiB\)"
    with pytest.raises(SpecError, match=expected):
        load_spec_text(text, source="big.json")


def _alias_bomb(levels: int) -> str:
    """Anchors a, b, ...: each a list of 9 references to the previous one (9**levels leaves)."""
    names = "abcdefghijklmnop"[:levels]
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9, 16])
def test_yaml_alias_bomb_is_refused_while_composing(levels: int) -> None:
    expected = r"bomb\.yaml:\d+:\d+: got YAML aliases that expand to more than 1048576 values"
    with pytest.raises(SpecError, match=expected):
        load_spec_text(_alias_bomb(levels), source="bomb.yaml")


def test_small_yaml_aliases_and_merge_keys_still_work() -> None:
    text = "d: &d {tool: noop}\nsteps:\n- {id: a, type: tool, inputs: {<<: *d}}\n- {id: b, type: tool, inputs: *d}\n"
    data = load_spec_text(text, source="ok.yaml")
    assert data["steps"][0]["inputs"] == data["steps"][1]["inputs"] == {"tool": "noop"}


def test_parse_spec_refuses_oversized_data() -> None:
    data = _run(_step(inputs={"prompt": "x" * (MAX_SPEC_BYTES + 1)}))
    assert "spec: got more than 1048576 bytes of JSON, expected at most 1 MiB" in _problems(data)


def test_crashing_pack_validator_becomes_a_problem() -> None:
    def broken(options: dict[str, Any]) -> list[str]:
        raise KeyError("mode")

    with pytest.raises(SpecError, match=r"packs\[0\]: options rejected by pack 'tool_acl' \(KeyError"):
        parse_spec(_run(packs=["tool_acl"]), packs={"tool_acl": broken})


def test_spec_bytes_must_be_utf8_and_a_bom_is_dropped() -> None:
    assert decode_spec_bytes(b"\xef\xbb\xbfsteps: []\n") == "steps: []\n"
    with pytest.raises(SpecError, match=r"run\.yaml:2: got bytes that are not UTF-8 at byte offset 9 \(0xc3 28\)|"
                                        r"run\.yaml:2: got bytes that are not UTF-8 at byte offset 9 \(0xc3\)"):
        decode_spec_bytes(b"steps:\n- \xc3(\n", source="run.yaml")
    with pytest.raises(SpecError, match="got more than 1048576 bytes"):
        decode_spec_bytes(b"x" * (MAX_SPEC_BYTES + 1))


# -- the step memo -------------------------------------------------------------------------------


def _warm_memo() -> dict[bytes, Any]:
    """A memo holding every step of the valid specs above, and steps that depend on others."""
    memo: dict[bytes, Any] = {}
    for data in (load_spec_text(YAML_SPEC), _valid(), _run(_step()),
                 _run(_step(), _step(id="b", depends_on=["a"]), _step(id="c", depends_on=["zz"]))):
        with contextlib.suppress(SpecError):
            parse_spec(data, packs=PACKS, memo=memo)
    assert memo
    return memo


@pytest.mark.parametrize(("data", "expected"), BAD_SPECS)
def test_a_warm_memo_reports_every_problem_a_cold_parse_reports(data: Any, expected: str) -> None:
    memo = _warm_memo()
    with pytest.raises(SpecError) as info:
        parse_spec(copy.deepcopy(data), packs=PACKS, memo=memo)
    assert str(info.value) == _problems(data)


def test_a_remembered_step_is_the_step_a_cold_parse_builds() -> None:
    memo = _warm_memo()
    for data in (load_spec_text(YAML_SPEC), _valid()):
        assert parse_spec(data, packs=PACKS, memo=memo) == parse_spec(data, packs=PACKS)


def test_a_remembered_step_still_needs_its_dependencies_in_this_spec() -> None:
    memo = _warm_memo()
    parse_spec(_run(_step(), _step(id="b", depends_on=["a"])), packs=PACKS, memo=memo)
    message = _problems(_run(_step(id="x"), _step(id="b", depends_on=["a"])))
    with pytest.raises(SpecError) as info:
        parse_spec(_run(_step(id="x"), _step(id="b", depends_on=["a"])), packs=PACKS, memo=memo)
    assert str(info.value) == message and "steps[1].depends_on: got 'a'" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_value_json_cannot_hold_never_matches_a_remembered_step(bad: float) -> None:
    memo: dict[bytes, Any] = {}
    parse_spec(_run(_step(inputs={"prompt": "hi", "temperature": None})), packs=PACKS, memo=memo)
    with pytest.raises(SpecError, match="a finite number"):
        parse_spec(_run(_step(inputs={"prompt": "hi", "temperature": bad})), packs=PACKS, memo=memo)


def test_a_remembered_step_with_a_reference_is_checked_against_each_specs_inputs() -> None:
    memo: dict[bytes, Any] = {}
    step = _step(inputs={"prompt": "${{ inputs.ticket }}"})
    parse_spec(_run(step, inputs={"ticket": "T-1"}), packs=PACKS, memo=memo)
    assert memo
    with pytest.raises(SpecError, match=r"steps\[0\]\.inputs\.prompt: got .*expected a path in the run's inputs"):
        parse_spec(_run(step, inputs={"other": 1}), packs=PACKS, memo=memo)


def test_steps_under_guardrails_are_not_remembered() -> None:
    """Their inputs may hold PII a pack redacts after validation: the memo never keeps them in clear."""
    memo: dict[bytes, Any] = {}
    secret = _step(inputs={"prompt": "mail jane@example.com"})
    parse_spec(_run(secret, packs=["pii_redaction"]), packs=PACKS, memo=memo)
    parse_spec(_run(_step(inputs={"prompt": "mail jane@example.com"},
                          policy={"packs": ["pii_redaction"]})), packs=PACKS, memo=memo)
    assert memo == {}
    parse_spec(_run(secret), packs=PACKS, memo=memo)  # no guardrail: remembered
    assert len(memo) == 1


def test_the_memo_stays_bounded() -> None:
    memo: dict[bytes, Any] = {}
    for i in range(_MEMO_MAX + 50):
        parse_spec(_run(_step(inputs={"prompt": f"p{i}"})), packs=PACKS, memo=memo)
        assert len(memo) <= _MEMO_MAX
