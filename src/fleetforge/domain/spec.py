"""Run specs: parse JSON/YAML text, validate it into a `RunSpec`, and render its canonical dict.

Validation collects every problem and raises one `SpecError`; each problem reads
'field.path: got VALUE, expected WHAT'.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final

import orjson
import yaml

from fleetforge.domain import controlspec as control
from fleetforge.domain import dataflow as flow
from fleetforge.domain.errors import SpecError
from fleetforge.domain.jsontext import plain
from fleetforge.domain.models import (
    BudgetLimit,
    CostHint,
    ExecutionSpec,
    PackSpec,
    PolicySpec,
    RunSpec,
    SloSpec,
    StepSpec,
    StepType,
)
from fleetforge.domain.money import MAX_USD
from fleetforge.domain.steptypes import STEP_TYPES, StepTypeSpec, canonical

__all__ = [
    "MAX_DEPTH",
    "MAX_SPEC_BYTES",
    "MAX_STEPS",
    "PackValidator",
    "check_step_inputs",
    "decode_spec_bytes",
    "load_spec_text",
    "parse_spec",
    "spec_to_dict",
]

PackValidator = Callable[[dict[str, Any]], list[str]]
"""Checks one pack's options; returns problems as 'option: got X, expected Y' (empty when valid)."""

MAX_SPEC_BYTES: Final = 1024 * 1024  # of the spec text, and of its JSON encoding (UTF-8)
MAX_STEPS: Final = 1000
MAX_DEPTH: Final = 64  # nesting levels, counted from the top of the spec

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NAME_TEXT: Final = "a string matching [A-Za-z0-9_.-]{1,64}"
_TIER = re.compile(r"[a-z0-9_-]{1,32}")
_TIER_TEXT: Final = "a string matching [a-z0-9_-]{1,32}"
_INT64_MAX: Final = 2**63 - 1
_DAY_MS: Final = 86_400_000
_SHOW_MAX: Final = 60
_KNOWN_MAX: Final = 20
_EMPTY: Final = "an empty document, expected a mapping with a 'steps' list"

_TOP_KEYS: Final = ("app", "breakpoints", "budget", "input_schema", "inputs", "labels", "outputs", "packs", "seed",
                    "steps", "workspace")
_STEP_KEYS: Final = ("approval", "depends_on", "execution", "id", "inputs", "policy", "type")
_EXECUTION_KEYS: Final = (
    "compensation", "cost_hint", "deadline_ms", "max_attempts", "retry_backoff_factor", "retry_backoff_ms"
)
_BUDGET_KEYS: Final = ("cost", "tokens")
_POLICY_KEYS: Final = ("budget", "packs", "slo")
_SLO_KEYS: Final = ("priority_boost", "queue_target_ms", "tier")


# -- text -> data -------------------------------------------------------------------------------


def decode_spec_bytes(raw: bytes, *, source: str = "<spec>") -> str:
    """The text of a spec file: UTF-8 (a leading BOM is dropped); raise `SpecError` naming the first bad byte.

    Callers read at most MAX_SPEC_BYTES + 1 bytes, so a longer `raw` only says "more than the limit".
    """
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([f"{source}: got more than {MAX_SPEC_BYTES} bytes, expected at most {MAX_SPEC_BYTES} bytes "
                         "(1 MiB)"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.end].hex(" ")
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError([f"{source}:{line}: got bytes that are not UTF-8 at byte offset {exc.start} (0x{bad}), "
                         "expected a UTF-8 text file (convert it, e.g. with iconv -t UTF-8)"]) from None


def load_spec_text(text: str, *, source: str = "<spec>") -> dict[str, Any]:
    """Parse spec text (JSON, else YAML) into a mapping; raise `SpecError` naming `source` and line."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_SPEC_BYTES:
        raise SpecError([f"{source}: got {size} bytes, expected at most {MAX_SPEC_BYTES} bytes (1 MiB)"])
    data = _parse_text(text, source) if text.strip() else None
    if data is None:
        raise SpecError([f"{source}: got {_EMPTY}"])
    problem = _shape_problem(data)
    if problem is not None:
        raise SpecError([f"{source}: {problem.removeprefix('spec: ')}"])
    if not isinstance(data, dict):
        raise SpecError([f"{source}: got {_show(data)} at the top level, expected a mapping with 'steps'"])
    return data


class _DuplicateJSONKey(Exception):
    """A JSON object repeats a key."""


class _DuplicateYAMLKey(yaml.constructor.ConstructorError):
    """A YAML mapping repeats a key."""


class _RefusedYAML(yaml.composer.ComposerError):
    """A YAML document is refused while composing; `problem` is the whole message."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one, and alias bombs.

    While composing (before anything is constructed) it weighs every node as the number of nodes
    it stands for once aliases are expanded, and refuses a document heavier than MAX_SPEC_BYTES
    (each expanded node is at least one byte of JSON, so no spec within the size limit is refused)
    and an alias to a node that contains it. Composing stays linear in the text.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._weights: dict[yaml.Node, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if alias:
            if node not in self._weights:
                raise _RefusedYAML(
                    None, None, "got a YAML alias to a node that contains it, expected data without cycles", mark
                )
            return node
        weight = 1
        if isinstance(node, yaml.SequenceNode):
            weight += sum(self._weights.get(item, 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            weight += sum(self._weights.get(k, 1) + self._weights.get(v, 1) for k, v in node.value)
        if weight > MAX_SPEC_BYTES:
            raise _RefusedYAML(
                None, None,
                f"got YAML aliases that expand to more than {MAX_SPEC_BYTES} values, "
                "expected at most 1 MiB of data once aliases are expanded (an alias bomb?)", mark,
            )
        self._weights[node] = weight
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if (key_node.tag, key_node.value) in seen:
                    raise _DuplicateYAMLKey(
                        "while constructing a mapping", node.start_mark,
                        f"got duplicate key {key_node.value!r}, expected each key once", key_node.start_mark,
                    )
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJSONKey(key)
        out[key] = value
    return out


def _parse_text(text: str, source: str) -> object:
    """JSON first (its messages are better for JSON), then YAML; raise `SpecError` when both fail."""
    too_deep = f"{source}: got nesting too deep to parse, expected at most {MAX_DEPTH} levels"
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        json_problem = f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
    except _DuplicateJSONKey as exc:
        json_problem = f"{source}: got duplicate key {exc.args[0]!r}, expected each key once"
    except ValueError as exc:  # e.g. an integer literal too long to convert
        json_problem = f"{source}: invalid JSON: {exc}"
    except RecursionError:
        raise SpecError([too_deep]) from None
    looks_json = text.lstrip()[:1] in ("{", "[")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        duplicate = isinstance(exc, (_DuplicateYAMLKey, _RefusedYAML))
        if looks_json and not duplicate:
            raise SpecError([json_problem]) from None
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        detail = exc.problem or "syntax error"
        if not duplicate:
            detail = f"invalid YAML: {detail}" + (f" ({exc.context})" if exc.context else "")
        raise SpecError([f"{where}: {detail}"]) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError([json_problem if looks_json else f"{source}: invalid YAML: {exc}"]) from None
    except RecursionError:
        raise SpecError([too_deep]) from None


class _Abort(Exception):
    """Stops the shape walk at the first problem."""


def _shape_problem(data: object, is_plain: bool | None = None) -> str | None:
    """A problem when `data` encodes to over MAX_SPEC_BYTES of JSON or nests deeper than MAX_DEPTH
    (`is_plain`: `jsontext.plain(data)`, when the caller knows it).

    Measures without encoding and stops early, so aliased (YAML) or self-referencing
    structures cannot blow up memory or time. Plain JSON data (`jsontext.plain`, at most 32 levels)
    whose compact encoding is at most half the limit passes at once: the measured text only adds a
    space after each separator, a byte of the compact one.
    """
    if plain(data) if is_plain is None else is_plain:
        try:
            if 2 * len(orjson.dumps(data)) <= MAX_SPEC_BYTES:
                return None
        except (TypeError, orjson.JSONEncodeError):
            pass
    total = 0
    trail: list[str | int] = []

    def add(n: int) -> None:
        nonlocal total
        total += n
        if total > MAX_SPEC_BYTES:
            raise _Abort(f"spec: got more than {MAX_SPEC_BYTES} bytes of JSON, expected at most 1 MiB")

    def walk(value: object) -> None:
        if len(trail) > MAX_DEPTH:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in trail).lstrip(".")
            raise _Abort(f"{path}: got nesting deeper than {MAX_DEPTH} levels, expected at most {MAX_DEPTH}")
        if type(value) is dict or (type(value) is not list and isinstance(value, Mapping)):
            add(2 + 2 * max(len(value) - 1, 0))
            for key, item in value.items():
                add(_encoded_len(str(key)) + 2)
                trail.append(str(key))
                walk(item)
                trail.pop()
        elif isinstance(value, (list, tuple)):
            add(2 + 2 * max(len(value) - 1, 0))
            for index, item in enumerate(value):
                trail.append(index)
                walk(item)
                trail.pop()
        else:
            add(_encoded_len(value))

    try:
        walk(data)
    except _Abort as exc:
        return str(exc)
    return None


_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def _encoded_len(value: object) -> int:
    """Bytes of `value` as JSON (UTF-8); the common scalars without encoding them."""
    if type(value) is str:
        if len(value) > MAX_SPEC_BYTES:
            return len(value)
        if value.isascii() and not _NEEDS_ESCAPE.search(value):
            return len(value) + 2
    elif type(value) is bool:
        return 4 if value else 5
    elif type(value) is int:
        try:
            return len(int.__repr__(value))
        except ValueError:  # an integer too long to print
            return MAX_SPEC_BYTES + 1
    elif type(value) is float and math.isfinite(value):
        return len(float.__repr__(value))
    elif value is None:
        return 4
    try:
        return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", errors="replace"))
    except ValueError:  # an integer too long to print
        return MAX_SPEC_BYTES + 1


# -- data -> RunSpec ----------------------------------------------------------------------------


def _agent_namespaces(check: _Checker, steps: tuple[StepSpec, ...]) -> None:
    """An agent step's units are steps named `<agent id>.t<n>...`: no other step may take such an id."""
    agents = [s.id for s in steps if s.type == StepType.AGENT]
    for index, s in enumerate(steps):
        for agent in agents:
            if s.id.startswith(f"{agent}."):
                check.bad(f"steps[{index}].id", s.id, f"an id not starting with {agent + '.'!r} "
                          f"(the ids of agent step {agent!r}'s turns and tool calls)")


StepMemo = dict[bytes, StepSpec]
"""Steps already validated, by their JSON text (keys sorted): a fleet submits the same steps again and
again. Valid only with the same `packs` and `step_types`; kept by the caller (see `parse_spec`)."""
_MEMO_MAX: Final = 4096


def parse_spec(
    data: Mapping[str, Any], *, packs: Mapping[str, PackValidator], step_types: Mapping[str, StepTypeSpec] = STEP_TYPES,
    memo: StepMemo | None = None,
) -> RunSpec:
    """Validate `data` into a `RunSpec`; raise one `SpecError` listing every problem found.

    `packs` maps each known guardrail pack name to the validator of its options; `step_types` each
    step type to its input check (domain.steptypes). `memo`, when given, keeps the steps found valid
    for the next call with the same `packs` and `step_types`: a step seen before is not checked again
    (only its dependencies, against this spec's steps).
    """
    is_plain = plain(data)
    problem = _shape_problem(data, is_plain)
    if problem is not None:
        raise SpecError([problem])
    # plain JSON data (no NaN, no non-string keys...) has one JSON text per value: a faithful memo key
    # nor are the steps of a run under guardrails (they may redact PII in any step's inputs)
    run_packs_given = isinstance(data, Mapping) and bool(data.get("packs"))
    check = _Checker(packs, step_types, memo if is_plain and not run_packs_given else None)
    top = check.mapping(data, "", "a mapping with a 'steps' list", _TOP_KEYS)
    if top is None:
        raise SpecError(check.problems)
    workspace = check.name(top["workspace"], "workspace") if "workspace" in top else "default"
    app = check.name(top["app"], "app") if "app" in top else "default"
    labels = check.labels(top["labels"]) if "labels" in top else {}
    seed: int = check.field(top, "seed", "", 0, 0, None)
    budget = check.budget(top.get("budget"), "budget")
    run_packs = check.packs(top["packs"], "packs") if "packs" in top else ()
    schema = check.run_inputs(top.get("inputs", {}), top.get("input_schema"), "input_schema" in top)
    if "steps" not in top:
        check.missing("steps", f"a non-empty list of at most {MAX_STEPS} steps")
    steps = check.steps(top["steps"]) if "steps" in top else ()
    outputs = check.outputs(top["outputs"], steps) if "outputs" in top else {}
    _agent_namespaces(check, steps)
    stops = control.breakpoints(check, top["breakpoints"], frozenset(s.id for s in steps)) if "breakpoints" in top \
        else ()
    if check.problems:
        raise SpecError(check.problems)
    return RunSpec(
        steps=steps, workspace=workspace, app=app, labels=labels, budget=budget, seed=seed, packs=run_packs,
        inputs=check.run_inputs_value, input_schema=schema, outputs=outputs, breakpoints=stops,
    )


def check_step_inputs(step_type: str, inputs: dict[str, Any], path: str,
                      step_types: Mapping[str, StepTypeSpec] = STEP_TYPES) -> list[str]:
    """Problems of `inputs` for a step of `step_type` (its registered check), e.g. once references are resolved."""
    check = _Checker({}, step_types)
    step_types[step_type].validate(check, inputs, path)
    return check.problems


def _show(value: object) -> str:
    """repr of `value`, cut to about 60 characters."""
    try:
        text = repr(value)
    except Exception:  # e.g. an integer too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expect(kind: str, lo: float, hi: float | None, value: float | None = None) -> str:
    """'an integer >= 1 (and <= 100)' and the like, naming first the bound `value` broke."""
    if value is not None and value < lo:
        return f"{kind} >= {lo}" + (f" (and <= {hi})" if hi is not None else "")
    if value is not None and hi is not None and value > hi:
        return f"{kind} <= {hi} (and >= {lo})"
    return f"{kind} >= {lo}" if hi is None else f"{kind} from {lo} to {hi}"


def _known(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_KNOWN_MAX])
    return shown if len(names) <= _KNOWN_MAX else f"{shown}, ... ({len(names) - _KNOWN_MAX} more)"


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """One dependency cycle as [a, b, ..., a], or None; iterative DFS in step order."""
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        path, on_path, stack = [root], {root}, [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done.add(path[-1])
                on_path.discard(path.pop())
                stack.pop()
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done and nxt in graph:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(graph[nxt]))
    return None


class _Checker:
    """Builds spec parts from raw data; records problems instead of raising."""

    def __init__(self, packs: Mapping[str, PackValidator], step_types: Mapping[str, StepTypeSpec],
                 memo: StepMemo | None = None) -> None:
        self.validators = packs
        self.step_types = step_types
        self.memo = memo
        self.ref_free: set[int] = set()  # ids of remembered steps whose inputs hold no reference
        self.problems: list[str] = []
        self.run_inputs_value: dict[str, Any] = {}

    def bad(self, path: str, value: object, expected: str) -> None:
        self.problems.append(f"{path or 'spec'}: got {_show(value)}, expected {expected}")

    def missing(self, path: str, expected: str) -> None:
        self.problems.append(f"{path}: missing, expected {expected}")

    def mapping(
        self, value: object, path: str, expected: str, allowed: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """`value` as a dict of its string keys (minus unknown ones), or None if not a mapping."""
        if not isinstance(value, Mapping):
            self.bad(path, value, expected)
            return None
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.problems.append(f"{path or 'spec'}: got key {_show(key)}, expected string keys")
            elif allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                expected = f"one of {', '.join(allowed)}{hint}"
                self.problems.append(f"{_join(path, key)}: unknown key, expected {expected}")
            else:
                out[key] = item
        return out

    def number(self, value: object, path: str, lo: float, hi: float | None, integer: bool) -> Any:
        """`value` if an integer (else a finite number, as float) within [lo, hi]; None when bad."""
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            self.bad(path, value, _expect(kind, lo, hi))
            return None
        try:
            ok = math.isfinite(value) and lo <= value <= (_INT64_MAX if hi is None else hi)
        except OverflowError:  # an integer too big for a float
            ok = False
        if ok:
            return value if integer else float(value)
        if isinstance(value, float) and not math.isfinite(value):
            self.bad(path, value, "a finite " + _expect("number", lo, hi))
        elif hi is None and value > _INT64_MAX:
            self.bad(path, value, f"{kind} <= {_INT64_MAX}")
        else:
            self.bad(path, value, _expect(kind, lo, hi, value))
        return None

    def field(self, m: dict[str, Any], key: str, path: str, default: Any, lo: float, hi: float | None) -> Any:
        """m[key] checked as an int or float (the type of `default`); `default` when absent or bad."""
        if key not in m:
            return default
        got = self.number(m[key], _join(path, key), lo, hi, integer=isinstance(default, int))
        return default if got is None else got

    def name(self, value: object, path: str, pattern: re.Pattern[str] = _NAME, text: str = _NAME_TEXT) -> str:
        if isinstance(value, str) and pattern.fullmatch(value):
            return value
        self.bad(path, value, text)
        return ""

    def text(self, m: dict[str, Any], key: str, path: str, expected: str, nonempty: bool = True) -> None:
        """Record a problem unless m[key] is a string (a non-empty one when `nonempty`)."""
        if key not in m:
            self.missing(_join(path, key), expected)
        elif not isinstance(m[key], str) or (nonempty and not m[key]):
            self.bad(_join(path, key), m[key], expected)

    def plain(self, value: object, path: str) -> Any:
        """A plain JSON copy of `value` (dicts, lists, scalars); records parts JSON cannot hold."""
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if isinstance(key, str):
                    out[key] = self.plain(item, f"{path}.{key}")
                else:
                    self.problems.append(f"{path}: got key {_show(key)}, expected string keys")
            return out
        if isinstance(value, (list, tuple)):
            return [self.plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            self.bad(path, value, "a finite number")
        elif not (value is None or isinstance(value, (str, int, float))):
            self.bad(path, value, "a JSON value (string, number, boolean, null, list or mapping)")
        return value

    def labels(self, value: object) -> dict[str, str]:
        m = self.mapping(value, "labels", "a mapping of string to string") or {}
        for key, item in m.items():
            if not key:
                self.bad("labels", key, "non-empty label names")
            elif not isinstance(item, str):
                self.bad(f"labels.{key}", item, "a string")
        return {key: item for key, item in m.items() if key and isinstance(item, str)}

    def budget(self, value: object, path: str) -> BudgetLimit | None:
        if value is None:
            return None
        m = self.mapping(value, path, "a mapping with tokens and/or cost", _BUDGET_KEYS) or {}
        limit = BudgetLimit(
            tokens=None if m.get("tokens") is None else self.field(m, "tokens", path, 0, 0, None),
            cost=None if m.get("cost") is None else self.field(m, "cost", path, 0.0, 0, MAX_USD),
        )
        return None if limit.empty else limit

    def packs(self, value: object, path: str) -> tuple[PackSpec, ...]:
        if not isinstance(value, (list, tuple)):
            self.bad(path, value, "a list of pack names or {name, ...options} mappings")
            return ()
        known = f"a known pack (known: {_known(sorted(self.validators))})"
        out: list[PackSpec] = []
        seen: dict[str, str] = {}
        for index, item in enumerate(value):
            item_path = name_path = f"{path}[{index}]"
            name: object = item
            options: dict[str, Any] = {}
            if not isinstance(item, str):
                m = self.mapping(item, item_path, f"a pack name or a mapping with 'name', {known}")
                if m is None:
                    continue
                if "name" not in m:
                    self.missing(f"{item_path}.name", known)
                    continue
                name, name_path = m["name"], f"{item_path}.name"
                options = {k: self.plain(v, f"{item_path}.{k}") for k, v in m.items() if k != "name"}
            if not isinstance(name, str) or name not in self.validators:
                self.bad(name_path, name, known)
            elif name in seen:
                self.bad(name_path, name, f"each pack at most once per list (also at {seen[name]})")
            else:
                seen[name] = item_path
                self.pack_options(name, options, item_path)
                out.append(PackSpec(name=name, options=options))
        return tuple(out)

    def pack_options(self, name: str, options: dict[str, Any], path: str) -> None:
        try:
            found = self.validators[name](_copy(options))
        except Exception as exc:  # a buggy validator must not crash validation
            self.problems.append(f"{path}: options rejected by pack {name!r} ({type(exc).__name__}: {exc})")
            return
        self.problems.extend(f"{path}.{problem}" for problem in found)

    def steps(self, value: object) -> tuple[StepSpec, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            self.bad("steps", value, f"a non-empty list of at most {MAX_STEPS} steps")
            return ()
        if len(value) > MAX_STEPS:
            self.problems.append(f"steps: got {len(value)} steps, expected at most {MAX_STEPS}")
        ids = self.step_ids(value)
        known, id_set = f"the id of another step (known: {_known(ids)})", set(ids)
        built = [self.known_step(raw, f"steps[{i}]", id_set, known) for i, raw in enumerate(value)]
        steps = tuple(step for step in built if step is not None)
        graph: dict[str, tuple[str, ...]] = {}
        for step in steps:
            if step.id in id_set:
                graph.setdefault(step.id, step.depends_on)
        edges = any(graph.values())  # without one there is no cycle, and no step has an ancestor
        cycle = _find_cycle(graph) if edges else None
        if cycle is not None:
            self.problems.append(f"steps: cycle {' -> '.join(cycle)}, expected an acyclic graph")
            return steps
        above = flow.ancestors(graph) if edges else dict.fromkeys(graph, frozenset[str]())
        control.check_compensations(self, steps, above)
        compensated: dict[str, set[str]] = {}
        for s in steps:
            if s.execution.compensation is not None:
                compensated.setdefault(s.execution.compensation, set()).add(s.id)
        for index, one in enumerate(built):
            if one is not None and one.id in id_set and id(one) not in self.ref_free:
                failing = frozenset(compensated.get(one.id, ()))
                self.problems += flow.check_refs(one.inputs, f"steps[{index}].inputs", step=one.id,
                                                 ancestors_of=above.get(one.id, frozenset()),
                                                 known=frozenset(id_set), run_inputs=self.run_inputs_value,
                                                 compensates=failing)[0]
        return steps

    def run_inputs(self, value: object, schema: object, has_schema: bool) -> dict[str, Any] | None:
        """Check the run's `inputs` (a JSON object within its size limit) against `input_schema`; the schema."""
        m = self.mapping(value, "inputs", "a mapping (a JSON object) of run inputs")
        if m is None:
            return None
        inputs = {key: self.plain(item, f"inputs.{key}") for key, item in m.items()}
        size = flow.json_size(inputs)
        if size > flow.MAX_RUN_INPUTS_BYTES:
            self.problems.append(f"inputs: got {size} bytes of JSON, expected at most {flow.MAX_RUN_INPUTS_BYTES} "
                                 "bytes (256 KiB); pass large data by reference (a URL or an id)")
            return None
        self.run_inputs_value = inputs
        if not has_schema:
            return None
        found = flow.schema_problems(schema, inputs)
        self.problems += found
        return None if found or not isinstance(schema, dict) else self.plain(schema, "input_schema")

    def outputs(self, value: object, steps: tuple[StepSpec, ...]) -> dict[str, Any]:
        """The run's `outputs`: names to values whose references may name any step of the run."""
        m = self.mapping(value, "outputs", "a mapping of output name to a reference such as "
                                           "'${{ steps.ID.output.text }}'") or {}
        out = {self.name(key, f"outputs.{key}"): self.plain(item, f"outputs.{key}") for key, item in m.items()}
        known = frozenset(s.id for s in steps)
        self.problems += flow.check_refs(out, "outputs", step=None, ancestors_of=None, known=known,
                                         run_inputs=self.run_inputs_value)[0]
        return out

    def step_ids(self, raw_steps: list[Any] | tuple[Any, ...]) -> list[str]:
        """Valid step ids in order; records duplicates (invalid ids are reported per step)."""
        first: dict[str, int] = {}
        for index, raw in enumerate(raw_steps):
            sid = raw.get("id") if isinstance(raw, Mapping) else None
            if not isinstance(sid, str) or not _NAME.fullmatch(sid):
                continue
            if sid in first:
                self.bad(f"steps[{index}].id", sid, f"a unique step id (steps[{first[sid]}] has it too)")
            else:
                first[sid] = index
        return list(first)

    def known_step(self, raw: object, path: str, ids: set[str], known: str) -> StepSpec | None:
        """`step`, or the same step from the memo when it was found valid before and its dependencies are
        steps of this spec too."""
        policy = raw.get("policy") if type(raw) is dict else None
        if self.memo is None or type(raw) is not dict or (type(policy) is dict and policy.get("packs")):
            return self.step(raw, path, ids, known)  # a step under guardrails is not kept: its inputs may hold PII
        key = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
        hit = self.memo.get(key)
        if hit is not None and all(d in ids for d in hit.depends_on):
            if b"${{" not in key:  # no string of it holds a reference: nothing for `check_refs` to check
                self.ref_free.add(id(hit))
            return hit
        before = len(self.problems)
        step = self.step(raw, path, ids, known)
        if step is not None and len(self.problems) == before:
            if len(self.memo) >= _MEMO_MAX:
                self.memo.clear()
            self.memo[key] = step
        return step

    def step(self, raw: object, path: str, ids: set[str], known: str) -> StepSpec | None:
        m = self.mapping(raw, path, "a mapping with id, type and inputs", _STEP_KEYS)
        if m is None:
            return None
        sid = self.name(m["id"], f"{path}.id") if "id" in m else ""
        if "id" not in m:
            self.missing(f"{path}.id", _NAME_TEXT)
        stype: str | None = None
        types = f"one of {', '.join(self.step_types)}"
        if "type" not in m:
            self.missing(f"{path}.type", types)
        elif isinstance(m["type"], str) and m["type"] in self.step_types:
            stype = canonical(m["type"])
        else:
            self.bad(f"{path}.type", m["type"], types)
        inputs = self.inputs(m.get("inputs", {}), f"{path}.inputs", stype)
        return StepSpec(
            id=sid,
            type=stype or StepType.LLM,
            inputs=inputs,
            depends_on=self.depends_on(m.get("depends_on", []), f"{path}.depends_on", sid, ids, known),
            execution=self.execution(m.get("execution", {}), f"{path}.execution"),
            policy=self.policy(m.get("policy", {}), f"{path}.policy"),
            approval=control.approval(self, m["approval"], f"{path}.approval", stype, inputs)
            if "approval" in m else None,
        )

    def depends_on(self, value: object, path: str, sid: str, ids: set[str], known: str) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            self.bad(path, value, "a list of step ids (or one step id)")
            return ()
        out: list[str] = []
        for dep in items:
            if isinstance(dep, str) and dep and dep == sid:
                self.bad(path, dep, "the id of another step (a step cannot depend on itself)")
            elif not isinstance(dep, str) or dep not in ids:
                self.bad(path, dep, known)
            elif dep in out:
                self.problems.append(f"{path}: got {dep!r} twice, expected each dependency once")
            else:
                out.append(dep)
        return tuple(out)

    def inputs(self, value: object, path: str, stype: str | None) -> dict[str, Any]:
        m = self.mapping(value, path, "a mapping")
        inputs: dict[str, Any] = {key: self.plain(item, f"{path}.{key}") for key, item in (m or {}).items()}
        if m is None:
            return inputs
        if stype is not None:
            before = len(self.problems)
            self.step_types[stype].validate(self, inputs, path)
            # a field holding a reference is checked once it is resolved, when the step is claimed
            held = {where for where, _ in flow.find_refs(inputs, path)[0]}
            if held:
                self.problems[before:] = [p for p in self.problems[before:] if p.split(": ", 1)[0] not in held]
        return inputs

    def execution(self, value: object, path: str) -> ExecutionSpec:
        m = self.mapping(value, path, "a mapping of execution settings", _EXECUTION_KEYS) or {}
        hint: CostHint | None = None
        hint_path = f"{path}.cost_hint"
        if m.get("cost_hint") is not None:
            h = self.mapping(m["cost_hint"], hint_path, "a mapping with tokens and/or usd", ("tokens", "usd"))
            if h is not None:
                tokens = self.field(h, "tokens", hint_path, 0, 0, None)
                hint = CostHint(tokens=tokens, usd=self.field(h, "usd", hint_path, 0.0, 0, MAX_USD))
        d = ExecutionSpec()
        return ExecutionSpec(
            max_attempts=self.field(m, "max_attempts", path, d.max_attempts, 1, 100),
            retry_backoff_ms=self.field(m, "retry_backoff_ms", path, d.retry_backoff_ms, 0, 3_600_000),
            retry_backoff_factor=self.field(
                m, "retry_backoff_factor", path, d.retry_backoff_factor, 1.0, 10.0
            ),
            deadline_ms=self.field(m, "deadline_ms", path, d.deadline_ms, 1, _DAY_MS),
            cost_hint=hint,
            compensation=control.compensation(self, m["compensation"], f"{path}.compensation")
            if m.get("compensation") is not None else None,
        )

    def policy(self, value: object, path: str) -> PolicySpec:
        m = self.mapping(value, path, "a mapping with budget, slo and/or packs", _POLICY_KEYS) or {}
        return PolicySpec(
            budget=self.budget(m.get("budget"), f"{path}.budget"),
            slo=self.slo(m["slo"], f"{path}.slo") if "slo" in m else SloSpec(),
            packs=self.packs(m["packs"], f"{path}.packs") if "packs" in m else (),
        )

    def slo(self, value: object, path: str) -> SloSpec:
        m = self.mapping(value, path, "a mapping with tier, queue_target_ms and/or priority_boost", _SLO_KEYS)
        m = m or {}
        d = SloSpec()
        return SloSpec(
            tier=self.name(m["tier"], f"{path}.tier", _TIER, _TIER_TEXT) if "tier" in m else d.tier,
            queue_target_ms=self.field(m, "queue_target_ms", path, d.queue_target_ms, 1, _DAY_MS),
            priority_boost=self.field(m, "priority_boost", path, d.priority_boost, -_DAY_MS, _DAY_MS),
        )


# -- RunSpec -> data ----------------------------------------------------------------------------


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """The canonical JSON-able form of `spec`, defaults spelled out; `parse_spec` reads it back."""
    out: dict[str, Any] = {"workspace": spec.workspace, "app": spec.app, "labels": dict(spec.labels)}
    out["seed"] = spec.seed
    if spec.budget is not None and not spec.budget.empty:
        out["budget"] = _budget_dict(spec.budget)
    out["packs"] = [{"name": pack.name, **_copy(pack.options)} for pack in spec.packs]
    out["steps"] = [_step_dict(step) for step in spec.steps]
    if spec.inputs:
        out["inputs"] = _copy(spec.inputs)
    if spec.input_schema is not None:
        out["input_schema"] = _copy(spec.input_schema)
    if spec.outputs:
        out["outputs"] = _copy(spec.outputs)
    if spec.breakpoints:
        out["breakpoints"] = list(spec.breakpoints)
    return out


def _budget_dict(budget: BudgetLimit) -> dict[str, Any]:
    pairs = (("tokens", budget.tokens), ("cost", budget.cost))
    return {key: value for key, value in pairs if value is not None}


def _step_dict(step: StepSpec) -> dict[str, Any]:
    ex, slo = step.execution, step.policy.slo
    execution: dict[str, Any] = {
        "max_attempts": ex.max_attempts,
        "retry_backoff_ms": ex.retry_backoff_ms,
        "retry_backoff_factor": ex.retry_backoff_factor,
        "deadline_ms": ex.deadline_ms,
    }
    if ex.cost_hint is not None:
        execution["cost_hint"] = {"tokens": ex.cost_hint.tokens, "usd": ex.cost_hint.usd}
    if ex.compensation is not None:
        execution["compensation"] = {"step": ex.compensation}
    policy: dict[str, Any] = {}
    if step.policy.budget is not None and not step.policy.budget.empty:
        policy["budget"] = _budget_dict(step.policy.budget)
    policy["slo"] = {
        "tier": slo.tier, "queue_target_ms": slo.queue_target_ms, "priority_boost": slo.priority_boost
    }
    policy["packs"] = [{"name": pack.name, **_copy(pack.options)} for pack in step.policy.packs]
    out = {
        "id": step.id,
        "type": str(step.type),
        "inputs": _copy(step.inputs),
        "depends_on": list(step.depends_on),
        "execution": execution,
        "policy": policy,
    }
    if step.approval is not None:
        out["approval"] = control.approval_dict(step.approval)
    return out


def _copy(value: Any) -> Any:
    """Deep copy of plain JSON data (dicts, lists, scalars)."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(item) for item in value]
    return value
