"""Resolve a run's data flow: step inputs when a step is claimed, run outputs when the run succeeds.

The syntax and the submit-time checks are in `domain.dataflow`; docs/runtime.md ("Data between steps")
describes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetforge.core.policies.pii import redact_json, redaction_kinds
from fleetforge.domain import dataflow as flow
from fleetforge.domain.models import RunSpec, StepSpec
from fleetforge.domain.spec import check_step_inputs
from fleetforge.domain.steptypes import STEP_TYPES

__all__ = ["has_refs", "resolve_step_inputs", "run_outputs"]

has_refs = flow.has_refs

Outputs = Mapping[str, dict[str, Any] | None]


def _value(ref: flow.Ref, spec: RunSpec, outputs: Outputs, errors: Outputs | None = None) -> Any:
    """What `ref` names: a run input, part of a step's stored output, or the error of the step compensated."""
    if ref.root == "inputs":
        return flow.lookup(spec.inputs, ref.path, "inputs")
    if ref.part == "error":
        error = (errors or {}).get(ref.step)
        if error is None:
            raise flow.ResolveError(f"{ref.text}: step {ref.step!r} did not fail (this step compensates it)")
        return flow.lookup(error, ref.path, f"steps.{ref.step}.error")
    output = outputs.get(ref.step)
    if output is None:
        raise flow.ResolveError(f"{ref.text}: step {ref.step!r} has no output")
    return flow.lookup(output, ref.path, f"steps.{ref.step}.output")


def resolve_step_inputs(spec: RunSpec, step: StepSpec, outputs: Outputs,
                        errors: Outputs | None = None) -> tuple[dict[str, Any], str | None]:
    """`step`'s inputs with their references resolved against the run's inputs, `outputs` (by step id) and
    `errors` (of the step a compensation step compensates), then checked by the step's type; or (the
    inputs as written, why they cannot be: a validation failure)."""
    try:
        inputs = flow.resolve(step.inputs, lambda ref: _value(ref, spec, outputs, errors))
    except flow.ResolveError as exc:
        return dict(step.inputs), f"inputs of step {step.id!r}: {exc}"
    size = flow.json_size(inputs)
    if size > flow.MAX_RESOLVED_BYTES:
        return dict(step.inputs), (f"inputs of step {step.id!r}: resolved to {size} bytes of JSON, expected at "
                                   f"most {flow.MAX_RESOLVED_BYTES} (1 MiB)")
    problems = check_step_inputs(step.type, inputs, "inputs") if step.type in STEP_TYPES else []
    if problems:
        return dict(step.inputs), f"step {step.id!r} after resolving references: " + "; ".join(problems)
    return inputs, None


def run_outputs(spec: RunSpec, outputs: Outputs) -> dict[str, Any]:
    """The run's `outputs` resolved (a missing path gives null; all null over MAX_RESOLVED_BYTES), redacted
    with the kinds of every pii_redaction pack of the run, as its labels and inputs are."""
    out: dict[str, Any] = {}
    for name, template in spec.outputs.items():
        try:
            out[name] = flow.resolve(template, lambda ref: _value(ref, spec, outputs))
        except flow.ResolveError:
            out[name] = None
    if flow.json_size(out) > flow.MAX_RESOLVED_BYTES:
        return {name: None for name in out}
    kinds = redaction_kinds((*spec.packs, *(p for s in spec.steps for p in s.policy.packs)))
    return redact_json(out, kinds)[0] if kinds else out
