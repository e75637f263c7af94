"""Data between steps: `${{ ... }}` references to run inputs and to ancestors' outputs.

Syntax: `${{ inputs.PATH }}` (or `${{ inputs }}`, the whole object) and `${{ steps.ID.output.PATH }}`
(or `${{ steps.ID.output }}`); a compensation step may name the error of the step it compensates,
`${{ steps.ID.error.message }}` (or `.kind`, or `${{ steps.ID.error }}`, both as an object).
A PATH is a dotted list of names (`[A-Za-z_][A-Za-z0-9_-]*`) and `[N]` list indexes; a key that
is not such a name is written `["key"]` (e.g. `steps["fetch.v2"]`).
A string that is exactly one reference is replaced by the referenced value with its JSON type;
references inside a longer string are rendered as text (strings as they are, anything else as
compact JSON). There is no escape: a literal `${{` cannot appear in step inputs.

`find_refs` parses (at submit, to validate; at claim, to resolve); `resolve` substitutes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fleetforge.domain.jsontext import compact

__all__ = [
    "MAX_RESOLVED_BYTES",
    "MAX_RUN_INPUTS_BYTES",
    "REF_SYNTAX",
    "Ref",
    "RefSyntaxError",
    "ResolveError",
    "ancestors",
    "check_refs",
    "find_refs",
    "has_refs",
    "json_size",
    "lookup",
    "resolve",
    "schema_problems",
    "show_path",
]

MAX_RUN_INPUTS_BYTES: Final = 256 * 1024
"""Run `inputs`, as compact JSON (UTF-8), checked at submit."""
MAX_RESOLVED_BYTES: Final = 1024 * 1024
"""A step's resolved inputs (and a run's outputs), as compact JSON, checked when they are resolved."""

REF_SYNTAX: Final = "${{ inputs.NAME... }} or ${{ steps.ID.output... }}"
ERROR_FIELDS: Final = ("kind", "message")
"""What `${{ steps.ID.error }}` holds: the failure's error kind and its (redacted) message."""

_OPEN: Final = "${{"
_REF = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX = re.compile(r"\[(\d{1,9})\]")
_QUOTED = re.compile(r"\[(?:\"([^\"\\]*)\"|'([^'\\]*)')\]")

Segment = str | int


class RefSyntaxError(ValueError):
    """A `${{ ... }}` that does not parse; the message says where and what is expected."""


class ResolveError(ValueError):
    """A reference whose path is missing from the data at claim time, or a result over the size limit."""


@dataclass(frozen=True, slots=True)
class Ref:
    """One parsed reference: `root` is 'inputs' or 'steps'; `step` the step id for 'steps'; `path`
    the segments after `inputs` (or after `steps.ID.output`, or `steps.ID.error` when `part` is 'error')."""

    text: str  # as written, `${{ ... }}` included
    root: str
    step: str
    path: tuple[Segment, ...]
    part: str = "output"  # of a 'steps' reference: output | error


def show_path(head: str, path: tuple[Segment, ...]) -> str:
    """`head` and `path` written back in reference syntax."""
    out = head
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _NAME.fullmatch(seg):
            out += f".{seg}"
        else:
            out += f'["{seg}"]'
    return out


def _segments(expr: str) -> tuple[Segment, ...]:
    """The segments of a reference body such as `steps.plan.output.items[0]`."""
    m = _NAME.match(expr)
    if m is None:
        raise RefSyntaxError(f"a name at the start, got {expr[:20]!r}")
    out: list[Segment] = [m.group(0)]
    pos = m.end()
    while pos < len(expr):
        if expr[pos] == ".":
            m = _NAME.match(expr, pos + 1)
            if m is None:
                raise RefSyntaxError(f"a name after '.' at offset {pos + 1}")
            out.append(m.group(0))
        elif (m := _INDEX.match(expr, pos)) is not None:
            out.append(int(m.group(1)))
        elif (m := _QUOTED.match(expr, pos)) is not None:
            out.append(m.group(1) if m.group(1) is not None else m.group(2))
        else:
            raise RefSyntaxError(f"'.name', '[N]' or '[\"key\"]' at offset {pos}, got {expr[pos:pos + 10]!r}")
        pos = m.end()
    return tuple(out)


def _parse(text: str, body: str) -> Ref:
    expr = body.strip()
    if not expr:
        raise RefSyntaxError("an expression inside ${{ }}")
    segs = _segments(expr)
    root = segs[0]
    if root == "inputs":
        return Ref(text, "inputs", "", segs[1:])
    if root == "steps":
        if len(segs) < 3 or not isinstance(segs[1], str) or segs[2] not in ("output", "error"):
            raise RefSyntaxError("steps.ID.output followed by an optional path "
                                 "(or steps.ID.error in a compensation step)")
        return Ref(text, "steps", segs[1], segs[3:], str(segs[2]))
    raise RefSyntaxError(f"a reference rooted at 'inputs' or 'steps', got root {root!r}")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, string) of every string in `value`, recursively (keys are not scanned)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def has_refs(value: Any) -> bool:
    """Whether any string of `value` holds `${{`."""
    return any(_OPEN in text for _, text in _strings(value, ""))


def find_refs(value: Any, path: str) -> tuple[list[tuple[str, Ref]], list[tuple[str, str, str]]]:
    """Every reference in the strings of `value` as (field path, Ref), and every malformed one as
    (field path, text, what was expected)."""
    refs: list[tuple[str, Ref]] = []
    bad: list[tuple[str, str, str]] = []
    for where, text in _strings(value, path):
        if _OPEN not in text:
            continue
        end = 0
        for m in _REF.finditer(text):
            if _OPEN in text[end:m.start()]:
                bad.append((where, text, f"{REF_SYNTAX} ('${{{{' without its closing '}}}}')"))
            end = m.end()
            try:
                refs.append((where, _parse(m.group(0), m.group(1))))
            except RefSyntaxError as exc:
                bad.append((where, m.group(0), f"{REF_SYNTAX}: {exc}"))
        if _OPEN in text[end:]:
            bad.append((where, text, f"{REF_SYNTAX} ('${{{{' without its closing '}}}}')"))
    return refs, bad


def lookup(data: Any, path: tuple[Segment, ...], head: str) -> Any:
    """The value at `path` in `data`; `ResolveError` naming the first missing segment."""
    at = data
    for n, seg in enumerate(path):
        where = show_path(head, path[:n])
        if isinstance(seg, int):
            if not isinstance(at, list):
                raise ResolveError(f"{where} is {_kind(at)}, not a list, so it has no [{seg}]")
            if seg >= len(at):
                raise ResolveError(f"{where} has {len(at)} items, so it has no [{seg}]")
            at = at[seg]
        else:
            if not isinstance(at, Mapping):
                raise ResolveError(f"{where} is {_kind(at)}, not an object, so it has no key {seg!r}")
            if seg not in at:
                keys = ", ".join(sorted(map(str, at))[:20]) or "none"
                raise ResolveError(f"{where} has no key {seg!r} (keys: {keys})")
            at = at[seg]
    return at


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else compact(value)


def resolve(value: Any, get: Callable[[Ref], Any]) -> Any:
    """`value` with every reference replaced through `get` (which raises `ResolveError`); a copy."""
    if isinstance(value, str):
        if _OPEN not in value:
            return value
        whole = _REF.fullmatch(value)
        if whole is not None and whole.group(0).count(_OPEN) == 1:
            return get(_parse(value, whole.group(1)))
        return _REF.sub(lambda m: _text(get(_parse(m.group(0), m.group(1)))), value)
    if isinstance(value, Mapping):
        return {key: resolve(item, get) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(item, get) for item in value]
    return value


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (UTF-8)."""
    return len(compact(value).encode("utf-8", errors="replace"))


# -- submit-time checks --------------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def ancestors(graph: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """Each step's transitive dependencies (the graph must be acyclic)."""
    out: dict[str, frozenset[str]] = {}

    def of(sid: str) -> frozenset[str]:
        done = out.get(sid)
        if done is None:
            stack, seen = list(graph.get(sid, ())), set[str]()
            while stack:
                dep = stack.pop()
                if dep not in seen:
                    seen.add(dep)
                    stack.extend(graph.get(dep, ()))
            done = out[sid] = frozenset(seen)
        return done

    for sid in graph:
        of(sid)
    return out


def check_refs(value: Any, path: str, *, step: str | None, ancestors_of: frozenset[str] | None,
               known: frozenset[str], run_inputs: Mapping[str, Any],
               compensates: frozenset[str] = frozenset()) -> tuple[list[str], set[str]]:
    """Problems ('field: got V, expected W') of the references in `value`, and the field paths that hold one.

    `step` is the id of the step whose inputs these are (None for run outputs, which may name any
    step: `ancestors_of` None); references to run inputs must name a path that exists in `run_inputs`;
    `steps.ID.error` only names a step in `compensates` (those whose execution.compensation is `step`).
    """
    refs, bad = find_refs(value, path)
    problems = [f"{where}: got {_show(text)}, expected {expected}" for where, text, expected in bad]
    where_refs = {where for where, _ in refs} | {where for where, _, _ in bad}
    for where, ref in refs:
        if ref.root == "inputs":
            try:
                lookup(run_inputs, ref.path, "inputs")
            except ResolveError as exc:
                problems.append(f"{where}: got {_show(ref.text)}, expected a path in the run's inputs ({exc})")
            continue
        if ref.part == "error":
            if ref.step not in compensates:
                problems.append(f"{where}: got {_show(ref.text)}, expected steps.ID.error only in the inputs of "
                                f"the step ID names in execution.compensation (compensates: "
                                f"{', '.join(sorted(compensates)) or 'none'})")
            elif ref.path and ref.path[0] not in ERROR_FIELDS:
                problems.append(f"{where}: got {_show(ref.text)}, expected steps.{ref.step}.error followed by "
                                f"nothing, .kind or .message")
            continue
        listed = ", ".join(sorted(ancestors_of if ancestors_of is not None else known)[:20]) or "none"
        listed = f"ancestors: {listed}" if ancestors_of is not None else f"known: {listed}"
        if ref.step == step:
            problems.append(f"{where}: got {_show(ref.text)}, expected a reference to another step "
                            "(a step cannot use its own output)")
        elif ref.step not in known:
            problems.append(f"{where}: got {_show(ref.text)}, expected a known step id ({listed})")
        elif ancestors_of is not None and ref.step not in ancestors_of:
            problems.append(f"{where}: got {_show(ref.text)}, expected a step {step!r} depends on, directly or "
                            f"transitively (add {ref.step!r} to depends_on; {listed})")
    return problems, where_refs


def schema_problems(schema: object, inputs: Mapping[str, Any]) -> list[str]:
    """Problems of `input_schema` (a JSON Schema, its own `$schema` draft or 2020-12) and of `inputs` against it."""
    import jsonschema  # type: ignore[import-untyped]  # imported when a spec has a schema: most never do

    if not isinstance(schema, dict):
        return [f"input_schema: got {_show(schema)}, expected a JSON Schema (a mapping)"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = show_path("input_schema", tuple(exc.absolute_path))
        return [f"{where}: got {_show(exc.instance)}, expected a valid JSON Schema ({exc.message})"]
    problems = []
    for err in sorted(cls(schema).iter_errors(inputs), key=lambda e: [str(p) for p in e.absolute_path])[:20]:
        where = show_path("inputs", tuple(err.absolute_path))
        problems.append(f"{where}: got {_show(err.instance)}, expected a value input_schema accepts ({err.message})")
    return problems
