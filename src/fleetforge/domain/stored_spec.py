"""Stored run specs: rebuild the `RunSpec` of a spec validated at submit, without validating it again.

The runtime stores every run's spec in the canonical form `spec.spec_to_dict` writes; workers read it
back for each claim. `parse_spec` would walk it whole to bound its size and check every field again;
`parse_stored_spec` trusts the canonical shape and only falls back to `parse_spec` when data is not in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fleetforge.domain.models import (
    BudgetLimit,
    CostHint,
    ExecutionSpec,
    PackSpec,
    PolicySpec,
    RunSpec,
    SloSpec,
    StepSpec,
)
from fleetforge.domain.spec import PackValidator, parse_spec
from fleetforge.domain.steptypes import canonical

__all__ = ["parse_stored_spec"]

_STEP_KEYS: Final = frozenset({"depends_on", "execution", "id", "inputs", "policy", "type"})
_SLO_KEYS: Final = frozenset({"priority_boost", "queue_target_ms", "tier"})


def parse_stored_spec(data: Mapping[str, Any], *, packs: Mapping[str, PackValidator]) -> RunSpec:
    """The `RunSpec` of a spec stored at submit (the canonical form `spec_to_dict` wrote, validated then).

    Rebuilds it without the size walk and the per-field checks of `parse_spec`, and gives the same
    result; anything not in canonical form, or naming a pack not in `packs`, goes through `parse_spec`.
    """
    try:
        spec = _from_canonical(data, packs)
    except (KeyError, TypeError, ValueError, AttributeError):
        spec = None
    return spec if spec is not None else parse_spec(data, packs=packs)


_CANONICAL_TOP: Final = frozenset({"workspace", "app", "labels", "seed", "packs", "steps"})
_OPTIONAL_TOP: Final = frozenset({"inputs", "input_schema", "outputs"})  # written only when set
_CANONICAL_EXECUTION: Final = frozenset({"max_attempts", "retry_backoff_ms", "retry_backoff_factor", "deadline_ms"})
_CANONICAL_POLICY: Final = frozenset({"slo", "packs"})


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(value)
    return value


def _float(value: object) -> float:
    if type(value) is not float and type(value) is not int:
        raise TypeError(value)
    return float(value)


def _str(value: object) -> str:
    if type(value) is not str:
        raise TypeError(value)
    return value


def _canonical_budget(value: object) -> BudgetLimit | None:
    """A budget as `_budget_dict` writes it (a missing key is no limit); None when not canonical."""
    if type(value) is not dict or not value or not value.keys() <= {"tokens", "cost"}:
        return None
    tokens, cost = value.get("tokens"), value.get("cost")
    return BudgetLimit(tokens=None if tokens is None else _int(tokens), cost=None if cost is None else _float(cost))


def _canonical_packs(value: object, packs: Mapping[str, PackValidator]) -> tuple[PackSpec, ...] | None:
    if type(value) is not list:
        return None
    out: list[PackSpec] = []
    for item in value:
        if type(item) is not dict or _str(item["name"]) not in packs:
            return None
        out.append(PackSpec(name=item["name"], options={k: _copy(v) for k, v in item.items() if k != "name"}))
    return tuple(out)


def _from_canonical(data: Mapping[str, Any], packs: Mapping[str, PackValidator]) -> RunSpec | None:
    """`data` rebuilt as `parse_spec` would, when it has exactly the canonical shape; else None."""
    keys = data.keys() - _OPTIONAL_TOP
    if type(data) is not dict or not (keys == _CANONICAL_TOP or keys == _CANONICAL_TOP | {"budget"}):
        return None
    inputs, schema, outputs = data.get("inputs", {}), data.get("input_schema"), data.get("outputs", {})
    if type(inputs) is not dict or type(outputs) is not dict or not (schema is None or type(schema) is dict):
        return None
    budget = None
    if "budget" in data:
        budget = _canonical_budget(data["budget"])
        if budget is None:
            return None
    labels = data["labels"]
    run_packs = _canonical_packs(data["packs"], packs)
    raw_steps = data["steps"]
    if type(labels) is not dict or run_packs is None or type(raw_steps) is not list or not raw_steps:
        return None
    steps: list[StepSpec] = []
    for raw in raw_steps:
        step = _canonical_step(raw, packs)
        if step is None:
            return None
        steps.append(step)
    return RunSpec(steps=tuple(steps), workspace=_str(data["workspace"]), app=_str(data["app"]),
                   labels={_str(k): _str(v) for k, v in labels.items()}, budget=budget,
                   seed=_int(data["seed"]), packs=run_packs, inputs=_copy(inputs),
                   input_schema=None if schema is None else _copy(schema), outputs=_copy(outputs))


def _canonical_step(raw: object, packs: Mapping[str, PackValidator]) -> StepSpec | None:
    if type(raw) is not dict or raw.keys() != _STEP_KEYS:
        return None
    ex, policy, inputs, deps = raw["execution"], raw["policy"], raw["inputs"], raw["depends_on"]
    if type(ex) is not dict or type(policy) is not dict or type(inputs) is not dict or type(deps) is not list:
        return None
    if not (ex.keys() == _CANONICAL_EXECUTION or ex.keys() == _CANONICAL_EXECUTION | {"cost_hint"}):
        return None
    if not (policy.keys() == _CANONICAL_POLICY or policy.keys() == _CANONICAL_POLICY | {"budget"}):
        return None
    hint = None
    if "cost_hint" in ex:
        h = ex["cost_hint"]
        if type(h) is not dict or h.keys() != {"tokens", "usd"}:
            return None
        hint = CostHint(tokens=_int(h["tokens"]), usd=_float(h["usd"]))
    step_budget = None
    if "budget" in policy:
        step_budget = _canonical_budget(policy["budget"])
        if step_budget is None:
            return None
    slo = policy["slo"]
    step_packs = _canonical_packs(policy["packs"], packs)
    if type(slo) is not dict or slo.keys() != _SLO_KEYS or step_packs is None:
        return None
    ex_key = (_int(ex["max_attempts"]), _int(ex["retry_backoff_ms"]), _float(ex["retry_backoff_factor"]),
              _int(ex["deadline_ms"]))
    slo_key = (_str(slo["tier"]), _int(slo["queue_target_ms"]), _int(slo["priority_boost"]))
    execution = _EXECUTIONS.get(ex_key) if hint is None else None
    if execution is None:
        execution = ExecutionSpec(*ex_key, cost_hint=hint)
        if hint is None:
            _remember(_EXECUTIONS, ex_key, execution)
    policy_spec = _POLICIES.get(slo_key) if step_budget is None and not step_packs else None
    if policy_spec is None:
        policy_spec = PolicySpec(budget=step_budget, packs=step_packs, slo=SloSpec(*slo_key))
        if step_budget is None and not step_packs:
            _remember(_POLICIES, slo_key, policy_spec)
    return StepSpec(
        id=_str(raw["id"]),
        type=canonical(str(raw["type"])),
        inputs={_str(k): _copy(v) for k, v in inputs.items()},
        depends_on=tuple(_str(d) for d in deps),
        execution=execution,
        policy=policy_spec,
    )


# Immutable parts many steps share (no packs, whose options are mutable dicts), built once.
_EXECUTIONS: dict[tuple[int, int, float, int], ExecutionSpec] = {}
_POLICIES: dict[tuple[str, int, int], PolicySpec] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= 1024:
        cache.clear()
    cache[key] = value


def _copy(value: Any) -> Any:
    """Deep copy of plain JSON data (dicts and lists), as `parse_spec` copies inputs and options."""
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value
